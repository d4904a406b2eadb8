//! Plain data: what the sources found, before anyone renders or exports it. Later, event streams
//! update these structures in place; renderers and exporters only read them.
pub mod heap;
pub mod pages;
