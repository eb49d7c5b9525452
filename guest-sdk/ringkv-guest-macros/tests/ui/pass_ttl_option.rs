use std::time::Duration;

use ringkv_guest::{ttl, Ctx, IntoTtl};

#[ttl]
fn halve(_key: &[u8], _value: &[u8], ctx: &Ctx) -> impl IntoTtl {
    ctx.client_ttl().map(|t| t / 2)
}

#[allow(dead_code)]
fn typed(_key: &[u8], _value: &[u8], _ctx: &Ctx) -> Option<Duration> {
    None
}

fn main() {}
