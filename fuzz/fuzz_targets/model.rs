//! Arbitrary operation sequences into one shard through the property tests' reference model
//! (`core/tests/support/model.rs`), so the fuzzer checks the same invariants: the per-user limit,
//! visibility, strictly increasing ids, exact delivery after a resume, heartbeat spacing and
//! outage warnings.
#![no_main]
use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

#[allow(dead_code, unused_imports)]
#[path = "../../core/tests/support/mod.rs"]
mod support;

use support::model::{Model, Op, ResumeChoice, USERS};

fn op(u: &mut Unstructured<'_>) -> Result<Op> {
    Ok(match u.int_in_range(0u8..=15)? {
        0..=3 => Op::Open {
            user: u.choose_index(USERS)?,
            channel: u.choose_index(4)?,
            finance: u.arbitrary()?,
            v2: u.arbitrary()?,
            resume: match u.int_in_range(0u8..=8)? {
                0..=2 => ResumeChoice::None,
                3..=6 => ResumeChoice::Back(u.int_in_range(0usize..=9)?),
                7 => ResumeChoice::Malformed,
                _ => ResumeChoice::OtherEpoch,
            },
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
        },
        12 | 13 => Op::Advance { ms: u.int_in_range(0u64..=70_000)? },
        14 => Op::Down { channel: u.choose_index(4)? },
        _ => Op::Up { channel: u.choose_index(4)? },
    })
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let mut model = Model::new();
    // Bounded like the property test: tokens last an hour of model time.
    for _ in 0..80 {
        match op(&mut u) {
            Ok(op) => model.apply(op),
            Err(_) => break,
        }
    }
});
