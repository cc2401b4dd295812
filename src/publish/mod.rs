//! The release as it is pushed, below the verbs that push it (`push`, `push-manifest`,
//! `all-push`, `report`, `plan`): the images read back from the layout and the index over them
//! (`layout`), per-arch layouts of separate jobs merged into one (`merge`), the release report's
//! artifact and its listing (`report`), attaching an artifact to its index (`attach`), and the
//! read-only plan of a push (`plan`). It reads the layout and asks registries (read-only); the uploads are the
//! callers', through a `registry::push::Pusher`.

pub mod attach;
pub mod gates;
pub mod layout;
pub mod merge;
pub mod plan;
pub mod push;
pub mod report;
