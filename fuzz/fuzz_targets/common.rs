//! Shared set-up for the fuzz targets: the seed settings and an HS256 verifier.
use std::sync::Arc;

use sse_gateway_core::*;

pub const SECRET: &[u8] = b"fuzz-secret-of-at-least-32-bytes!!";

pub fn settings(extra: &str) -> Arc<Settings> {
    let text = format!("[auth]\ncookie = \"t\"\nquery_param = true\n[server]\npublish_endpoint = true\ncors_origins = [\"https://a.example\"]\n{extra}");
    Arc::new(Settings::new(Config::from_toml(&text).expect("config"), Catalogue::seed()).expect("settings"))
}

pub fn front(settings: &Arc<Settings>, metrics: &Arc<Metrics>) -> Front {
    let keys = KeyMaterial { secret: Some(SECRET.to_vec()), ..Default::default() };
    let verifier = JwtVerifier::new(&settings.config.auth, &keys).expect("verifier");
    Front::new(settings.clone(), Arc::new(verifier), metrics.clone())
}
