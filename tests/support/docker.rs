//! The Docker engine in tests: commands under a timeout, a static busybox for FROM-scratch
//! images, and removal of the images a test made. Tests skip when there is no engine.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Runs `cmd` under coreutils `timeout`, so a hung engine fails the test instead of hanging it.
pub fn run(secs: u32, program: &str, args: &[&str], docker_config: Option<&Path>) -> Output {
    let mut c = Command::new("timeout");
    c.arg(secs.to_string()).arg(program).args(args);
    if let Some(d) = docker_config {
        c.env("DOCKER_CONFIG", d);
    }
    c.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

pub fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A busybox that runs in a FROM-scratch image: an ELF without a PT_INTERP program header.
pub fn static_busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| std::fs::read(p).ok().is_some_and(|b| is_static_elf64(&b)))
}

fn is_static_elf64(b: &[u8]) -> bool {
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        // PT_INTERP (3) names the dynamic loader, which a scratch image lacks.
        b.get(o..o + 4)
            .is_some_and(|t| u32::from_le_bytes(t.try_into().unwrap()) != 3)
    })
}

/// Removes the images this test created even when an assertion fails half way.
pub struct Cleanup(pub Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for image in &self.0 {
            let _ = run(60, "docker", &["rmi", "-f", image], None);
        }
    }
}
