use std::time::Duration;

use ringkv_guest::{ttl, Ctx, Ttl};

#[ttl]
fn by_prefix(key: &[u8], _value: &[u8], ctx: &Ctx) -> Ttl {
    if key.starts_with(b"tmp/") {
        Ttl::After(Duration::from_secs(1))
    } else if ctx.client_ttl().is_none() {
        Ttl::Never
    } else {
        Ttl::Keep
    }
}

// A second stage in the same crate, and an `impl IntoTtl` return.
mod other {
    use ringkv_guest::{partition, IntoTtl, RoutingKey};

    #[allow(dead_code)]
    fn opaque(_key: &[u8]) -> impl IntoTtl {
        None::<std::time::Duration>
    }

    #[partition]
    fn whole(_key: &[u8]) -> RoutingKey {
        RoutingKey::whole()
    }
}

fn main() {}
