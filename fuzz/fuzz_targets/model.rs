//! Arbitrary operation sequences into one shard through the property tests' reference model
//! (`core/tests/support/model.rs`), so the fuzzer checks the same invariants: the per-user limit
//! and eviction (either policy), the shard's capacity (503 exactly when full and no eviction
//! frees a slot), visibility, strictly increasing ids, exact delivery after a resume and
//! `history_gap` exactly when due, heartbeat spacing, outage warnings, token expiry, and closes
//! only for a reason the stream has.
#![no_main]
use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

#[allow(dead_code, unused_imports)]
#[path = "../../core/tests/support/mod.rs"]
mod support;

use support::model::{Model, Op, ResumeChoice, BUFFER, USERS};

/// How many events back a resume goes (taken modulo the channel's event count), as the property
/// test draws it: often the window's edges (the oldest id inside it, the newest outside), inside
/// it, or anywhere in the channel's events.
fn back(u: &mut Unstructured<'_>) -> Result<usize> {
    Ok(match u.int_in_range(0u8..=9)? {
        0 | 1 => BUFFER,
        2 | 3 => BUFFER + 1,
        4..=7 => u.int_in_range(0..=BUFFER - 1)?,
        _ => u.arbitrary()?,
    })
}

/// Milliseconds an `Advance` moves the clock, as the property test draws them: often exactly
/// the eviction's minimum age, a millisecond under or over it, or a heartbeat interval.
fn advance_ms(u: &mut Unstructured<'_>) -> Result<u64> {
    Ok(match u.int_in_range(0u8..=9)? {
        0 => 5_000,
        1 => 4_999,
        2 => 5_001,
        3 => 30_000,
        _ => u.int_in_range(0u64..=70_000)?,
    })
}

fn op(u: &mut Unstructured<'_>) -> Result<Op> {
    Ok(match u.int_in_range(0u8..=17)? {
        0..=3 => Op::Open {
            user: u.choose_index(USERS)?,
            channel: u.choose_index(4)?,
            finance: u.arbitrary()?,
            v2: u.arbitrary()?,
            resume: match u.int_in_range(0u8..=11)? {
                0..=2 => ResumeChoice::None,
                3..=6 => ResumeChoice::Back(back(u)?),
                7 => ResumeChoice::Ahead(u.int_in_range(0usize..=3)?),
                8 => ResumeChoice::Zero,
                9 => ResumeChoice::Malformed,
                10 => ResumeChoice::OtherChannel(back(u)?),
                _ => ResumeChoice::OtherEpoch,
            },
            ttl: if u.ratio(1, 4)? { u.int_in_range(1u64..=180)? } else { 3600 },
            read: !u.ratio(1, 5)?,
        },
        4 | 5 => Op::Close { pick: u.arbitrary()? },
        6..=11 => Op::Publish {
            channel: u.choose_index(4)?,
            recipients: if u.ratio(2, 5)? {
                let n = u.int_in_range(0usize..=2)?;
                Some((0..n).map(|_| u.choose_index(USERS)).collect::<Result<Vec<_>>>()?)
            } else {
                None
            },
            v2: u.arbitrary()?,
            // Mostly small; some fill the output bound in a few; some are larger than the bound.
            pad: match u.int_in_range(0u8..=8)? {
                0..=5 => u.int_in_range(0usize..=40)?,
                6 | 7 => u.int_in_range(500usize..=2500)?,
                _ => u.int_in_range(4000usize..=9000)?,
            },
        },
        12 | 13 => Op::Advance { ms: advance_ms(u)?, step: !u.ratio(1, 5)? },
        14 => Op::Down { channel: u.choose_index(4)? },
        15 => Op::Up { channel: u.choose_index(4)? },
        16 => Op::Pause { pick: u.arbitrary()? },
        _ => Op::Read { pick: u.arbitrary()? },
    })
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    // A shard that never fills or one of 7 streams; the `evict_oldest` or `reject` policy.
    let Ok(shape) = u.int_in_range(0u8..=3) else { return };
    let mut model = Model::with_shard(if shape & 1 == 0 { 10_000 } else { 7 }, shape & 2 != 0);
    // Bounded like the property test. Once the input is used up `arbitrary` only returns
    // defaults (the same op again and again): the sequence ends there instead.
    for _ in 0..80 {
        if u.is_empty() {
            break;
        }
        match op(&mut u) {
            Ok(op) => model.apply(op),
            Err(_) => break,
        }
    }
});
