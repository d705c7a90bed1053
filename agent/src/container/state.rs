//! A container's life as the agent tracks it, and the one table of which
//! operation is allowed in which state ([`Operation::transition`]).
//!
//! ```text
//! created --Start--> running --Pause--> paused
//!                       ^                  |
//!                       +------Resume------+
//! any state --its init exits--> stopped
//! ```
//!
//! Exec needs a running container; Remove without force a created or
//! stopped one (with force any container is killed and removed).

use std::fmt;

/// Where a container is in its life. The words [`Display`](fmt::Display)
/// gives reach the host in error messages (the shim, containerd).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Built; its init waits for Start.
    Created,
    /// Started and not paused; its init has not exited.
    Running,
    /// Frozen by Pause; its init has not exited.
    Paused,
    /// Its init has exited.
    Stopped,
}

impl State {
    pub const ALL: [State; 4] = [
        State::Created,
        State::Running,
        State::Paused,
        State::Stopped,
    ];

    fn word(self) -> &'static str {
        match self {
            State::Created => "created",
            State::Running => "running",
            State::Paused => "paused",
            State::Stopped => "stopped",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

/// The operations on a container that depend on its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Start,
    Exec,
    Pause,
    Resume,
    /// Remove without force; with force every state may be removed.
    Remove,
}

impl Operation {
    pub const ALL: [Operation; 5] = [
        Operation::Start,
        Operation::Exec,
        Operation::Pause,
        Operation::Resume,
        Operation::Remove,
    ];

    /// The transition table: the state `self` leaves a container in that
    /// was in `from`, or `None` when `self` is not allowed in `from`.
    pub fn transition(self, from: State) -> Option<State> {
        use Operation::{Exec, Pause, Remove, Resume, Start};
        use State::{Created, Paused, Running, Stopped};
        match (self, from) {
            (Start, Created) => Some(Running),
            (Exec, Running) => Some(Running),
            (Pause, Running) => Some(Paused),
            (Resume, Paused) => Some(Running),
            // A created container's init is killed; then it is gone.
            (Remove, Created | Stopped) => Some(Stopped),
            _ => None,
        }
    }

    /// What a refusal says after "container <id> is <state>, ".
    pub fn refusal(self) -> &'static str {
        match self {
            Operation::Start => "not created",
            Operation::Exec | Operation::Pause => "not running",
            Operation::Resume => "not paused",
            Operation::Remove => "remove it with force",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transition_table() {
        use Operation::{Exec, Pause, Remove, Resume, Start};
        use State::{Created, Paused, Running, Stopped};
        let expected = |op, from| match (op, from) {
            (Start, Created) => Some(Running),
            (Exec, Running) => Some(Running),
            (Pause, Running) => Some(Paused),
            (Resume, Paused) => Some(Running),
            (Remove, Created) => Some(Stopped),
            (Remove, Stopped) => Some(Stopped),
            _ => None,
        };
        for op in Operation::ALL {
            for from in State::ALL {
                assert_eq!(
                    op.transition(from),
                    expected(op, from),
                    "{op:?} from {from}"
                );
            }
        }
        // Nothing leaves a stopped container but its removal.
        for op in Operation::ALL {
            assert_eq!(op.transition(Stopped).is_some(), op == Remove, "{op:?}");
        }
    }

    #[test]
    fn the_words_the_host_sees() {
        let words: Vec<String> = State::ALL.iter().map(State::to_string).collect();
        assert_eq!(words, ["created", "running", "paused", "stopped"]);
        let refusals: Vec<&str> = Operation::ALL.iter().map(|op| op.refusal()).collect();
        assert_eq!(
            refusals,
            [
                "not created",
                "not running",
                "not running",
                "not paused",
                "remove it with force"
            ]
        );
    }
}
