use super::*;

fn url(text: &str) -> Url {
    Url::parse(text).unwrap()
}

fn name(text: &str) -> ModelName {
    ModelName::parse(text).unwrap()
}

fn address(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn the_default_allows_only_ollamas_registry() {
    let policy = RegistryPolicy::default();
    assert_eq!(policy.allowed(), "registry.ollama.ai");
    assert!(policy.check_name(&name("library/tiny"), false).is_ok());
    assert!(
        policy
            .check_name(&name("registry.ollama.ai/library/tiny"), true)
            .is_ok()
    );
    let error = policy
        .check_name(&name("evil.example:5000/library/tiny"), false)
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        r#"registry "evil.example:5000" is not allowed (allowed: registry.ollama.ai; set OLLAMAMAX_REGISTRIES)"#
    );
    assert!(error.is_forbidden());
    assert_eq!(RegistryPolicy::parse(" , ", false).unwrap(), policy);
}

#[test]
fn entries_match_host_and_port() {
    let policy = RegistryPolicy::parse(
        "Registry.Example.com, 127.0.0.1:5000,[::1]:8080,h:443",
        false,
    )
    .unwrap();
    assert_eq!(
        policy.allowed(),
        "registry.example.com, 127.0.0.1:5000, [::1]:8080, h:443"
    );
    assert!(policy.allows(&url("https://registry.example.com/v2/")));
    assert!(policy.allows(&url("http://REGISTRY.example.com:9999/")));
    assert!(policy.allows(&url("http://127.0.0.1:5000/")));
    assert!(!policy.allows(&url("http://127.0.0.1:5001/")));
    assert!(!policy.allows(&url("http://127.0.0.2:5000/")));
    assert!(policy.allows(&url("http://[::1]:8080/")));
    assert!(policy.allows(&url("https://h/")));
    assert!(!policy.allows(&url("http://h/")));
    assert!(!policy.allows(&url("https://example.com/")));
    assert!(
        policy
            .check_name(&name("127.0.0.1:5000/library/tiny"), true)
            .is_ok()
    );
    assert!(
        policy
            .check_name(&name("127.0.0.1:5001/library/tiny"), true)
            .is_err()
    );
    for bad in ["a b", "https://x", "x/y", "user@x", "x:port", "x:99999"] {
        let error = RegistryPolicy::parse(bad, false).unwrap_err();
        assert!(
            error.to_string().starts_with("OLLAMAMAX_REGISTRIES:"),
            "{bad}: {error}"
        );
    }
    let many: Vec<String> = (0..=REGISTRIES_MAX).map(|i| format!("h{i}")).collect();
    assert!(RegistryPolicy::parse(&many.join(","), false).is_err());
}

#[test]
fn public_addresses() {
    for public in [
        "1.1.1.1",
        "8.8.8.8",
        "100.63.255.255",
        "100.128.0.0",
        "172.15.0.1",
        "172.32.0.1",
        "2606:4700::1111",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
    ] {
        assert!(is_public(address(public)), "{public}");
    }
    for refused in [
        "0.0.0.0",
        "10.1.2.3",
        "100.64.0.1",
        "127.0.0.1",
        "127.255.0.1",
        "169.254.169.254",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "192.0.0.8",
        "224.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "fe80::1",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::ffff:10.0.0.1",
        "::127.0.0.1",
        "64:ff9b::a9fe:a9fe",
    ] {
        assert!(!is_public(address(refused)), "{refused}");
    }
}

#[test]
fn targets_off_the_list_must_be_public_https() {
    let policy = RegistryPolicy::parse("127.0.0.1:5000,registry.example.com", false).unwrap();
    // The registry itself, and a CDN.
    assert!(
        policy
            .check_target(&url("http://127.0.0.1:5000/v2/x"), true)
            .is_ok()
    );
    assert!(
        policy
            .check_target(&url("https://cdn.example.net/blob?sig=1"), false)
            .is_ok()
    );
    assert!(
        policy
            .check_target(&url("https://8.8.8.8/blob"), false)
            .is_ok()
    );
    // A secure transfer does not go down to plain http, even on the list.
    assert!(
        policy
            .check_target(&url("http://registry.example.com/v2/x"), false)
            .is_err()
    );
    for refused in [
        "http://169.254.169.254/latest/meta-data/",
        "https://169.254.169.254/latest/meta-data/",
        "https://127.0.0.1:5001/",
        "https://10.0.0.1/",
        "https://[::1]/",
        "https://[::ffff:169.254.169.254]/",
        "https://[fe80::1]/",
        "http://cdn.example.net/blob",
        "ftp://cdn.example.net/blob",
        "file:///etc/passwd",
    ] {
        let refusal = policy.check_target(&url(refused), true).unwrap_err();
        assert!(
            !refusal.0.contains("latest") && !refusal.0.contains("blob"),
            "no path in {refusal}"
        );
    }
}

#[test]
fn dns_answers_keep_public_addresses_unless_the_name_opts_in() {
    let socket = |text: &str| SocketAddr::new(address(text), 0);
    let answer = || [socket("127.0.0.1"), socket("::1")].into_iter();
    let closed = RegistryPolicy::parse("localhost:5000", false).unwrap();
    let refusal = closed.filter_addresses("localhost", answer()).unwrap_err();
    assert!(refusal.0.contains("\"localhost\""), "{refusal}");
    assert!(refusal.0.contains(REGISTRIES_PRIVATE_ENV), "{refusal}");
    // Mixed answers lose their private addresses.
    let mixed = [socket("10.0.0.1"), socket("1.1.1.1")].into_iter();
    assert_eq!(
        closed.filter_addresses("cdn.example.net", mixed).unwrap(),
        [socket("1.1.1.1")]
    );
    let open = RegistryPolicy::parse("localhost:5000", true).unwrap();
    assert_eq!(
        open.filter_addresses("LOCALHOST", answer()).unwrap().len(),
        2
    );
    // The opt-in covers names on the list only.
    assert!(open.filter_addresses("other.lan", answer()).is_err());
    // An empty answer is DNS's failure, not the policy's.
    assert!(
        closed
            .filter_addresses("x", std::iter::empty())
            .unwrap()
            .is_empty()
    );
}

#[test]
fn refusals_are_found_through_error_chains() {
    let io = std::io::Error::other(Refusal("refused".into()));
    assert_eq!(refusal_in(&io).as_deref(), Some("refused"));
    let other = std::io::Error::other("nothing to see");
    assert_eq!(refusal_in(&other), None);
}
