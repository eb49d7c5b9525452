use super::*;

fn principal(grants: &[(Role, &[u8])]) -> Principal {
    Principal {
        name: "p".into(),
        grants: grants.iter().map(|(role, p)| Grant { role: *role, prefix: p.to_vec() }).collect(),
    }
}

#[test]
fn roles_include_the_ones_below() {
    let reader = principal(&[(Role::Read, b"")]);
    assert!(reader.check(&Need::Read(b"k")).is_ok());
    assert!(reader.check(&Need::Scan(b"")).is_ok());
    assert!(reader.check(&Need::Write(b"k")).is_err());
    assert!(reader.check(&Need::Admin("deploy a hook")).is_err());
    assert!(reader.check(&Need::ClusterRead("metrics")).is_ok());

    let writer = principal(&[(Role::Write, b"")]);
    assert!(writer.check(&Need::Read(b"k")).is_ok());
    assert!(writer.check(&Need::Write(b"k")).is_ok());
    assert!(writer.check(&Need::Admin("add a node")).is_err());

    let admin = principal(&[(Role::Admin, b"")]);
    for need in [Need::Read(b"k"), Need::Write(b"k"), Need::Scan(b""), Need::Admin("x"), Need::Authenticated] {
        assert!(admin.check(&need).is_ok(), "{need}");
    }
    assert!(principal(&[]).check(&Need::Authenticated).is_ok());
    assert!(principal(&[]).check(&Need::Read(b"")).is_err());
}

#[test]
fn prefix_matching_is_byte_exact() {
    let p = principal(&[(Role::Write, b"app/")]);
    assert!(p.check(&Need::Write(b"app/x")).is_ok());
    assert!(p.check(&Need::Write(b"app/")).is_ok());
    // Neighbours, case, look-alikes and path tricks all stay outside.
    for key in [&b"app"[..], b"apq/x", b"App/x", b"ap", b"", b"../app/x", b"/app/x", b"app\\x", b"app\0/x", b" app/x"] {
        assert!(p.check(&Need::Write(key)).is_err(), "{}", show_bytes(key));
        assert!(p.check(&Need::Read(key)).is_err(), "{}", show_bytes(key));
    }
    // Keys are never normalized: "app/../other" starts with "app/" and is a key under it, nothing else.
    assert!(p.check(&Need::Write(b"app/../other")).is_ok());
}

#[test]
fn raw_non_utf8_prefixes_match_bytes_not_text() {
    let p = principal(&[(Role::Read, &[0xff, 0xfe, b'/'])]);
    assert!(p.check(&Need::Read(&[0xff, 0xfe, b'/', 0x00, 0x80])).is_ok());
    assert!(p.check(&Need::Read(&[0xff, 0xfe])).is_err());
    assert!(p.check(&Need::Read(&[0xff, 0xff, b'/'])).is_err());
    // U+FFFD (what a lossy UTF-8 conversion would produce) is not the raw byte.
    assert!(p.check(&Need::Read("\u{fffd}\u{fffd}/x".as_bytes())).is_err());
    assert!(p.check(&Need::Scan(&[0xff, 0xfe, b'/', 0xc0])).is_ok());
}

#[test]
fn a_scan_must_stay_inside_the_grant() {
    let p = principal(&[(Role::Read, b"tenant-a/")]);
    assert!(p.check(&Need::Scan(b"tenant-a/")).is_ok());
    assert!(p.check(&Need::Scan(b"tenant-a/users/")).is_ok());
    // A shorter prefix would return keys of other tenants.
    for prefix in [&b""[..], b"tenant-", b"tenant-a", b"tenant-b/"] {
        let err = p.check(&Need::Scan(prefix)).expect_err("outside the grant");
        assert!(err.to_string().contains("scan prefix"), "{err}");
    }
}

#[test]
fn prefixed_grants_never_give_cluster_rights() {
    let p = principal(&[(Role::Admin, b"app/")]);
    assert!(p.check(&Need::Write(b"app/1")).is_ok());
    assert!(p.check(&Need::Admin("deploy a hook")).is_err());
    assert!(p.check(&Need::ClusterRead("metrics")).is_err());
    // Several grants add up.
    let p = principal(&[(Role::Read, b"a/"), (Role::Write, b"b/")]);
    assert!(p.check(&Need::Read(b"a/1")).is_ok());
    assert!(p.check(&Need::Write(b"a/1")).is_err());
    assert!(p.check(&Need::Write(b"b/1")).is_ok());
}

#[test]
fn a_denial_names_what_is_missing() {
    let err = principal(&[(Role::Read, b"app/")]).check(&Need::Write(b"app/\xff")).expect_err("denied");
    let text = err.to_string();
    assert!(text.contains("lacks write on key \"app/\\xff\""), "{text}");
    assert!(text.contains("read on prefix \"app/\""), "{text}");
    let long = vec![b'x'; 5000];
    assert!(show_bytes(&long).len() < 200);
}

#[test]
fn tokens_parse_by_their_last_underscore() {
    let t = new_secret("ci_deploy.v2");
    let parts = parse_token(&t).expect("generated tokens parse");
    assert_eq!(parts.name, "ci_deploy.v2");
    assert_eq!(parts.secret.len(), 64);
    for bad in [
        "",
        "rkv_",
        "rkv_name",
        "rkv__0123456789abcdef0123456789abcdef",
        "rkv_name_short",
        "xyz_name_0123456789abcdef0123456789abcdef",
        "rkv_na me_0123456789abcdef0123456789abcdef",
        "rkv_name_0123456789abcdef0123456789abcde!",
    ] {
        let err = parse_token(bad).expect_err(bad);
        assert!(bad.len() < 5 || !err.contains(bad), "errors never echo the token: {err}");
    }
    assert_ne!(new_secret("a"), new_secret("a"));
}

#[test]
fn hashes_verify_only_their_token() {
    let token = new_secret("app");
    let hash = hash_secret(&token).expect("hash");
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(token::verify(&token, &hash));
    assert!(!token::verify(&new_secret("app"), &hash));
    assert!(!token::verify(&token, "not a phc string"));
    assert_ne!(hash_secret(&token).expect("hash"), hash, "salted");
}

fn enabled(tokens: Vec<StaticToken>) -> Authenticator {
    Authenticator::new(AuthConfig {
        enabled: true,
        principals: vec![ConfiguredPrincipal { name: "backup-bot".into(), role: Role::Admin, prefix: String::new() }],
        tokens,
    })
}

fn header(token: &str) -> Vec<u8> {
    format!("Bearer {token}").into_bytes()
}

#[tokio::test]
async fn requests_are_authenticated_by_token_or_certificate() {
    let token = new_secret("reader");
    let hash = hash_secret(&token).expect("hash");
    let auth = enabled(vec![StaticToken { name: "reader".into(), hash, role: Role::Read, prefix: "app/".into() }]);
    let h = header(&token);

    let p = auth.authorize(Some(&h), PeerIdentity::None, Need::Read(b"app/1")).await.expect("reader reads");
    assert_eq!(p.expect("principal").name, "reader");
    assert!(matches!(
        auth.authorize(Some(&h), PeerIdentity::None, Need::Write(b"app/1")).await,
        Err(AuthError::Denied(_))
    ));
    assert!(matches!(
        auth.authorize(None, PeerIdentity::None, Need::Authenticated).await,
        Err(AuthError::Unauthenticated(_))
    ));
    let wrong = header(&new_secret("reader"));
    let err = auth.authorize(Some(&wrong), PeerIdentity::None, Need::Read(b"app/1")).await.expect_err("wrong secret");
    assert!(matches!(err, AuthError::Unauthenticated(_)));
    assert!(!err.to_string().contains("rkv_"), "{err}");
    assert!(matches!(
        auth.authorize(Some(b"Basic abc"), PeerIdentity::None, Need::Authenticated).await,
        Err(AuthError::Unauthenticated(_))
    ));

    let cert = PeerIdentity::Client { common_name: "backup-bot".into() };
    assert!(auth.authorize(None, cert, Need::Admin("backup")).await.is_ok());
    let stranger = PeerIdentity::Client { common_name: "stranger".into() };
    assert!(matches!(auth.authorize(None, stranger, Need::Read(b"k")).await, Err(AuthError::Denied(_))));
    assert!(auth.authorize(None, PeerIdentity::Node, Need::Admin("add a node")).await.is_ok());

    let off = Authenticator::new(AuthConfig::default());
    assert_eq!(off.authorize(None, PeerIdentity::None, Need::Admin("x")).await, Ok(None));
}

#[tokio::test]
async fn a_revoked_runtime_token_is_refused_even_when_cached() {
    let auth = enabled(Vec::new());
    let token = new_secret("app");
    let record = TokenRecord {
        name: "app".into(),
        hash: hash_secret(&token).expect("hash"),
        grant: Grant { role: Role::Write, prefix: Vec::new() },
        created_at_ms: 0,
    };
    let h = header(&token);
    assert!(auth.authorize(Some(&h), PeerIdentity::None, Need::Write(b"k")).await.is_err(), "not created yet");
    auth.set_runtime_tokens(vec![record.clone()]);
    assert!(auth.authorize(Some(&h), PeerIdentity::None, Need::Write(b"k")).await.is_ok());
    assert!(auth.lock().cache.len() == 1, "verified tokens are cached");
    auth.set_runtime_tokens(Vec::new());
    assert!(matches!(
        auth.authorize(Some(&h), PeerIdentity::None, Need::Write(b"k")).await,
        Err(AuthError::Unauthenticated(_))
    ));
}

#[test]
fn config_entries_are_checked() {
    let bad_hash = AuthConfig {
        enabled: true,
        principals: Vec::new(),
        tokens: vec![StaticToken { name: "a".into(), hash: "plain".into(), role: Role::Read, prefix: String::new() }],
    };
    assert!(bad_hash.validate().expect_err("bad hash").contains("argon2"));
    let hash = hash_secret(&new_secret("a")).expect("hash");
    let twice = AuthConfig {
        enabled: true,
        principals: Vec::new(),
        tokens: vec![
            StaticToken { name: "a".into(), hash: hash.clone(), role: Role::Read, prefix: String::new() },
            StaticToken { name: "a".into(), hash, role: Role::Read, prefix: String::new() },
        ],
    };
    assert!(twice.validate().expect_err("duplicate").contains("twice"));
}
