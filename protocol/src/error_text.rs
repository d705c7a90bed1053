//! The one-line text form of an error and its causes ("a: b: c"), as every
//! hull process writes it into a log line, a ttrpc status or its stderr, and
//! as the other side then reads it.

use std::fmt;

/// `Display` for an error and its `source` chain on one line: "a: b: c".
///
/// A cause whose text is already in the line is left out: some errors
/// (linux-loader's, thiserror's `{0}` messages) repeat their cause in their
/// own message.
pub struct ErrorChain<'a>(pub &'a dyn std::error::Error);

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = self.0.to_string();
        let mut source = self.0.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if !line.contains(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            source = cause.source();
        }
        f.pad(&line)
    }
}

/// [`ErrorChain`] as a `String`.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    ErrorChain(err).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn causes_join_on_one_line_without_repeats() {
        let err = Layer(
            "starting the VM",
            Some(Box::new(Layer(
                "opening disk: ENOENT",
                Some(Box::new(Layer("ENOENT", None))),
            ))),
        );
        assert_eq!(error_chain(&err), "starting the VM: opening disk: ENOENT");
        assert_eq!(error_chain(&Layer("alone", None)), "alone");
    }
}
