//! The eBPF pipeline: a real uretprobe in the kernel counts a fixture's malloc calls exactly.
use pagealloc::glibc::identity::is_libc_name;
use pagealloc::proc::Target;
use pagealloc::trace::MallocCounter;
use pagealloc_tests::*;

#[test]
fn root_malloc_uretprobe_counts_every_call() {
    require_root();
    const CALLS: u64 = 20_000;
    let mut fixture = Fixture::spawn(fixture_path!("MALLOC_CALLS"), &[&CALLS.to_string()]);
    let target = Target::open(fixture.pid()).unwrap();
    let maps = target.maps().unwrap();
    let libc = maps
        .iter()
        .find(|m| is_libc_name(&m.path))
        .map(|m| target.root_path(std::path::Path::new(&m.path)))
        .expect("fixture uses glibc");
    let counter = MallocCounter::attach(fixture.pid(), &libc).expect("uretprobe attaches");
    assert_eq!(
        counter.stats().unwrap().calls,
        0,
        "nothing counted before the calls"
    );
    fixture.command("g");
    let stats = counter.stats().unwrap();
    assert_eq!(stats.calls, fixture.get("calls"));
    assert_eq!(stats.calls, CALLS);
    assert_eq!(stats.chunk_bytes, fixture.get("chunk_bytes"));
    assert_eq!(stats.failures, 0);
}
