//! One module per subcommand.

pub mod agent;
pub mod ca;
pub mod call;
pub mod demo;
pub mod inspect;
pub mod probe;
pub mod proxy;
pub mod serve;
