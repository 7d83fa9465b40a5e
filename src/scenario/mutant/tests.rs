//! The mutant relay's defects, each against the input that shows it.

use super::*;

#[test]
fn terminators_strict_and_lenient() {
    assert_eq!(terminator(b"a\r\n.\r\nMAIL", false), Some((3, 6)));
    assert_eq!(terminator(b".\r\n", false), Some((0, 3)));
    assert_eq!(terminator(b"a\n.\nMAIL\r\n.\r\n", false), Some((10, 13)));
    assert_eq!(terminator(b"a\n.\nMAIL\r\n.\r\n", true), Some((2, 4)));
    assert_eq!(terminator(b"a\r\n.\nX", true), Some((3, 5)));
    assert_eq!(terminator(b"a\r\n..\r\n", false), None);
}

#[test]
fn source_routes_are_dropped() {
    assert_eq!(
        without_source_route(b"RCPT TO:<@hop.example,@b.example:b@example.net> X=1\r\n"),
        b"RCPT TO:<b@example.net> X=1\r\n"
    );
    assert_eq!(
        without_source_route(b"RCPT TO:<b@example.net>\r\n"),
        b"RCPT TO:<b@example.net>\r\n"
    );
    assert_eq!(
        without_source_route(b"MAIL FROM:<>\r\n"),
        b"MAIL FROM:<>\r\n"
    );
}

#[test]
fn unclean_and_unstuff() {
    assert!(!unclean(b"a\r\nb\r\n"));
    assert!(unclean(b"a\nb"));
    assert!(unclean(b"a\rb"));
    assert!(unclean(b"a\0"));
    assert_eq!(unstuff(b"..a\r\nb..\r\n..\r\n"), b".a\r\nb..\r\n.\r\n");
    assert_eq!(stuff(b".a\r\nb.\r\n.\r\n"), b"..a\r\nb.\r\n..\r\n");
    assert_eq!(unstuff(&stuff(b".\r\n..x\r\n")), b".\r\n..x\r\n");
}

#[test]
fn defects_by_name() {
    for d in std::iter::once(Defect::None).chain(Defect::ALL) {
        assert_eq!(d.name().parse::<Defect>().unwrap(), d);
    }
    assert!("nope".parse::<Defect>().unwrap_err().contains("lf-dot-lf"));
}
