//! How the binary is linked, where that decides what every sidecar keeps
//! resident: its relative relocations packed (`build.rs`), so the loader
//! does not map three quarters of a MiB of relocation records into each
//! pod for as long as it runs; and only where the C library can load it.

#![cfg(all(
    target_os = "linux",
    target_env = "gnu",
    target_pointer_width = "64",
    target_endian = "little"
))]
// Test code: a failed read is a failed test.
#![allow(clippy::unwrap_used)]

const PT_DYNAMIC: u32 = 2;
const DT_NULL: u64 = 0;
const DT_RELASZ: u64 = 8;
const DT_RELR: u64 = 36;

fn u16_at(b: &[u8], at: usize) -> usize {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap()).into()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The binary's dynamic section, as (tag, value) pairs.
fn dynamic_entries(elf: &[u8]) -> Vec<(u64, u64)> {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not a 64-bit ELF file");
    assert_eq!(elf[5], 1, "not a little-endian ELF file");
    let (phoff, phentsize, phnum) = (
        usize::try_from(u64_at(elf, 0x20)).unwrap(),
        u16_at(elf, 0x36),
        u16_at(elf, 0x38),
    );
    let dynamic = (0..phnum)
        .map(|i| phoff + i * phentsize)
        .find(|&ph| u32_at(elf, ph) == PT_DYNAMIC)
        .expect("a dynamically linked binary has a PT_DYNAMIC segment");
    let offset = usize::try_from(u64_at(elf, dynamic + 8)).unwrap();
    let size = usize::try_from(u64_at(elf, dynamic + 32)).unwrap();
    elf[offset..offset + size]
        .chunks_exact(16)
        .map(|e| (u64_at(e, 0), u64_at(e, 8)))
        .take_while(|&(tag, _)| tag != DT_NULL)
        .collect()
}

/// Whether the glibc this test runs on (the one the binary was linked
/// against, in a native build) loads packed relocations: found by reading
/// the `libc.so.6` mapped into this process, not the way `build.rs` asks.
fn this_glibc_loads_packed_relocations() -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let libc = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.ends_with("/libc.so.6"))
        .expect("a glibc program maps libc.so.6");
    let lib = std::fs::read(libc).unwrap();
    lib.windows(17).any(|w| w == b"GLIBC_ABI_DT_RELR")
}

#[test]
fn the_binarys_relative_relocations_are_packed_where_glibc_loads_them() {
    let elf = std::fs::read(env!("CARGO_BIN_EXE_bedrock-broker")).unwrap();
    let entries = dynamic_entries(&elf);
    let packed = entries.iter().any(|&(tag, _)| tag == DT_RELR);
    if !this_glibc_loads_packed_relocations() {
        // An older glibc refuses a packed binary at start.
        assert!(!packed, "packed relocations, which this glibc cannot load");
        return;
    }
    assert!(
        packed,
        "no DT_RELR, though this glibc loads packed relocations: build.rs's probe of the \
         compiler's libc.so.6 said no, or the linker ignored -z pack-relative-relocs \
         (GNU ld before 2.38)"
    );
    // What is left unpacked are the few relocations against symbols; the
    // relative ones alone took 744 KiB before.
    let rela = entries
        .iter()
        .find(|&&(tag, _)| tag == DT_RELASZ)
        .map_or(0, |&(_, size)| size);
    assert!(rela < 64 * 1024, "{rela} bytes of unpacked relocations");
}
