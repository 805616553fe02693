pub use keygate_kernel::{Jid, SessionId};
