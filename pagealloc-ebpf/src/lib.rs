#![no_std]
// The programs live in the binary target; this library exists so that pagealloc can name this
// crate as a build-dependency (which makes cargo rebuild it when these sources change).
