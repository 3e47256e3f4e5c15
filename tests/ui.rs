//! Compile-time behaviour of `#[paid_action]`: signatures that must keep compiling, and misuse
//! that must fail with a clear, well-placed error (`tests/ui/fail/*.stderr`).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
