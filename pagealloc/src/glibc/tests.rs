use super::layout::Offsets;
use crate::debuginfo::{self, DebugOptions};
use std::path::Path;
#[test]
fn probe() {
    let info = debuginfo::load(
        Path::new("/usr/lib/x86_64-linux-gnu/libc.so.6"),
        &DebugOptions {
            use_cache: false,
            debuginfod_urls: Some(vec![]),
            ..Default::default()
        },
    )
    .unwrap();
    println!("{:#?}", Offsets::new(&info.layout).unwrap());
    println!("{:?}", info.layout.heap_info);
    println!("{:?}", info.layout.malloc_par);
    println!(
        "{:?}",
        info.layout.tcache_perthread_struct.as_ref().map(|t| t.size)
    );
    println!("{:?}", info.layout.glibc_version);
}
