//! Binds the programs' kernel function (kfunc) calls to the running kernel.
//!
//! C programs declare a kfunc as a `__ksym` extern and libbpf writes its BTF
//! id into the call. Rust programs have no such externs, so they call a
//! kfunc as a helper with a placeholder number (`zerohop_abi::kfunc`), and
//! this module rewrites every such instruction of the object before aya
//! loads it: into a call of the kfunc where the kernel has it, else into
//! `r0 = -EOPNOTSUPP`, what the kfunc itself answers when it cannot act,
//! so that the program still loads and handles the refusal.

use anyhow::{Context, Result};
use object::{Object, ObjectSection, SectionKind};
use zerohop_abi::kfunc;

/// Each placeholder and the kernel function it stands for.
pub const KFUNCS: [(i32, &str); 1] = [(kfunc::SOCK_DESTROY, "bpf_sock_destroy")];

/// `BPF_JMP | BPF_CALL`.
const CALL: u8 = 0x85;
/// `BPF_ALU64 | BPF_MOV | BPF_K`.
const MOV_IMM: u8 = 0xb7;
/// Source register field of a call to a kfunc (`BPF_PSEUDO_KFUNC_CALL`),
/// in the register byte's high nibble.
const PSEUDO_KFUNC_CALL: u8 = 2 << 4;
const EOPNOTSUPP: i32 = 95;

/// What [`bind`] did with one kernel function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub name: &'static str,
    /// Its BTF id, or `None`: this kernel lacks it.
    pub id: Option<u32>,
    /// Calls rewritten.
    pub calls: usize,
}

/// The object with every placeholder call of its code bound, using `id_of`
/// (normally [`crate::kernel_btf::KernelBtf::function`]) to find kfuncs.
pub fn bind(object: &[u8], id_of: impl Fn(&str) -> Option<u32>) -> Result<(Vec<u8>, Vec<Binding>)> {
    let mut bound = object.to_vec();
    let mut bindings: Vec<Binding> = KFUNCS
        .iter()
        .map(|&(_, name)| Binding {
            name,
            id: id_of(name),
            calls: 0,
        })
        .collect();
    let file = object::File::parse(object).context("parsing the eBPF object")?;
    for section in file
        .sections()
        .filter(|section| section.kind() == SectionKind::Text)
    {
        let Some((start, size)) = section.file_range() else {
            continue;
        };
        let (start, size) = (start as usize, size as usize);
        for at in (start..start + size).step_by(8) {
            let Some(insn) = bound.get_mut(at..at + 8) else {
                break;
            };
            if insn[0] != CALL || insn[1] != 0 {
                continue;
            }
            let imm = i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]);
            let Some(index) = KFUNCS
                .iter()
                .position(|&(placeholder, _)| placeholder == imm)
            else {
                continue;
            };
            let binding = &mut bindings[index];
            let (code, regs, imm) = match binding.id {
                Some(id) => (CALL, PSEUDO_KFUNC_CALL, id as i32),
                None => (MOV_IMM, 0, -EOPNOTSUPP),
            };
            insn[0] = code;
            insn[1] = regs;
            insn[4..8].copy_from_slice(&imm.to_le_bytes());
            binding.calls += 1;
        }
    }
    Ok((bound, bindings))
}

/// These read the embedded programs, so they are built only with them
/// (`cargo xtask test` builds them; see build.rs).
#[cfg(all(test, zerohop_ebpf))]
mod tests {
    use super::*;
    use crate::datapath::EBPF_OBJECT;

    fn count(object: &[u8], insn: [u8; 8]) -> usize {
        object
            .chunks_exact(8)
            .filter(|chunk| *chunk == insn)
            .count()
    }

    fn placeholder() -> [u8; 8] {
        let mut insn = [CALL, 0, 0, 0, 0, 0, 0, 0];
        insn[4..].copy_from_slice(&kfunc::SOCK_DESTROY.to_le_bytes());
        insn
    }

    #[test]
    fn binds_every_call_to_the_kfunc_id() {
        // The TCP and the UDP iterator each call bpf_sock_destroy once.
        let before = count(EBPF_OBJECT, placeholder());
        assert_eq!(before, 2);
        let (bound, bindings) = bind(EBPF_OBJECT, |name| {
            (name == "bpf_sock_destroy").then_some(4242)
        })
        .unwrap();
        assert_eq!(
            bindings,
            vec![Binding {
                name: "bpf_sock_destroy",
                id: Some(4242),
                calls: 2
            }]
        );
        assert_eq!(count(&bound, placeholder()), 0);
        let mut call = [CALL, PSEUDO_KFUNC_CALL, 0, 0, 0, 0, 0, 0];
        call[4..].copy_from_slice(&4242i32.to_le_bytes());
        assert_eq!(count(&bound, call), 2);
        assert_eq!(bound.len(), EBPF_OBJECT.len());
    }

    #[test]
    fn without_the_kfunc_the_call_answers_eopnotsupp() {
        let (bound, bindings) = bind(EBPF_OBJECT, |_| None).unwrap();
        assert_eq!(bindings[0].id, None);
        assert_eq!(bindings[0].calls, 2);
        assert_eq!(count(&bound, placeholder()), 0);
        let mut mov = [MOV_IMM, 0, 0, 0, 0, 0, 0, 0];
        mov[4..].copy_from_slice(&(-EOPNOTSUPP).to_le_bytes());
        assert_eq!(count(&bound, mov), 2);
    }
}
