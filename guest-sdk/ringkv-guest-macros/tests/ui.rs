//! Compile-time checks of the attributes: good hooks build, and each kind
//! of mistake is reported at the user's code with the expected signature
//! (see ui/*.stderr).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass_*.rs");
    t.compile_fail("tests/ui/fail_*.rs");
}
