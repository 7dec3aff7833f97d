//! What the agent reads from the running kernel's BTF: the byte offsets of
//! the kernel struct fields the programs read (tcp.rs, terminate.rs), and
//! the BTF ids of the kernel functions they call (kfunc.rs). Field and
//! function names are stable across kernels; offsets and ids are not.

use std::path::Path;

use anyhow::{bail, Context, Result};
use btf_rs::{Btf, Type};
use zerohop_abi::global;

/// Where the kernel exposes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Each read-only global of the programs that holds a field offset: the
/// global, the struct, the field.
pub const FIELD_OFFSETS: [(&str, &str, &str); 7] = [
    (global::TCP_COPIED_SEQ, "tcp_sock", "copied_seq"),
    (global::TCP_WRITE_SEQ, "tcp_sock", "write_seq"),
    (global::SKC_DADDR, "sock_common", "skc_daddr"),
    (global::SKC_DPORT, "sock_common", "skc_dport"),
    (global::SKC_FAMILY, "sock_common", "skc_family"),
    (global::SKC_V6_DADDR, "sock_common", "skc_v6_daddr"),
    (global::SKC_COOKIE, "sock_common", "skc_cookie"),
];

/// The running kernel's BTF.
pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    /// Reads the BTF file at `path` (normally [`VMLINUX_BTF`]).
    pub fn open(path: &Path) -> Result<KernelBtf> {
        // Read whole, then parsed in memory: parsed from the file, every
        // record costs a seek, a syscall (a third of the agent's start).
        let btf = std::fs::read(path)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| Ok(Btf::from_bytes(&bytes)?))
            .with_context(|| format!("reading the kernel's BTF from {}", path.display()))?;
        Ok(KernelBtf { btf })
    }

    /// The value of each global of [`FIELD_OFFSETS`] in this kernel.
    pub fn field_offsets(&self) -> Result<Vec<(&'static str, u32)>> {
        FIELD_OFFSETS
            .iter()
            .map(|&(global, name, field)| {
                let offset = member_offset(&self.btf, name, field)
                    .with_context(|| format!("struct {name}.{field} in the kernel's BTF"))?;
                Ok((global, offset))
            })
            .collect()
    }

    /// The BTF id of the kernel function `name`, if this kernel has one.
    pub fn function(&self, name: &str) -> Option<u32> {
        let ids = self.btf.resolve_ids_by_name(name).ok()?;
        ids.into_iter()
            .find(|&id| matches!(self.btf.resolve_type_by_id(id), Ok(Type::Func(_))))
    }
}

/// Byte offset of `field` in struct `name`, looking through anonymous struct
/// and union members (some kernels group fields in them).
fn member_offset(btf: &Btf, name: &str, field: &str) -> Result<u32> {
    for ty in btf.resolve_types_by_name(name)? {
        if let Type::Struct(_) = ty {
            if let Some(bits) = find_member(btf, &ty, field, 0)? {
                if bits % 8 != 0 {
                    bail!("{name}.{field} is a bit field");
                }
                return Ok(bits / 8);
            }
            bail!("struct {name} has no field {field}");
        }
    }
    bail!("no struct {name}")
}

/// Bit offset of `field` within `ty` (plus `base`), if it has one.
fn find_member(btf: &Btf, ty: &Type, field: &str, base: u32) -> Result<Option<u32>> {
    let (Type::Struct(composite) | Type::Union(composite)) = ty else {
        return Ok(None);
    };
    for member in &composite.members {
        let offset = base + member.bit_offset();
        let name = btf.resolve_name(member)?;
        if name == field {
            return Ok(Some(offset));
        }
        if name.is_empty() {
            let inner = btf.resolve_chained_type(member)?;
            if let Some(found) = find_member(btf, &inner, field, offset)? {
                return Ok(Some(found));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets() -> std::collections::BTreeMap<&'static str, u32> {
        // zerohop requires a kernel with BTF; the machine the tests run on has one.
        let btf = KernelBtf::open(Path::new(VMLINUX_BTF)).unwrap();
        btf.field_offsets().unwrap().into_iter().collect()
    }

    #[test]
    fn finds_the_tcp_sock_fields_of_the_running_kernel() {
        let offsets = offsets();
        let (copied, write) = (
            offsets[global::TCP_COPIED_SEQ],
            offsets[global::TCP_WRITE_SEQ],
        );
        // Both sit well inside the struct, after struct inet_connection_sock,
        // and are distinct u32 fields.
        assert!(copied > 500 && write > 500, "{offsets:?}");
        assert_ne!(copied, write);
        assert_eq!(copied % 4, 0);
        assert_eq!(write % 4, 0);
    }

    #[test]
    fn finds_the_sock_common_fields_through_its_anonymous_unions() {
        let offsets = offsets();
        // The address pair opens the struct, the port pair follows the hash.
        assert_eq!(offsets[global::SKC_DADDR], 0, "{offsets:?}");
        assert_eq!(offsets[global::SKC_DPORT], 12, "{offsets:?}");
        assert_eq!(offsets[global::SKC_FAMILY], 16, "{offsets:?}");
        assert!(offsets[global::SKC_V6_DADDR] > 16);
        assert_eq!(offsets[global::SKC_COOKIE] % 8, 0);
    }

    #[test]
    fn finds_kernel_functions_only_by_their_name() {
        let btf = KernelBtf::open(Path::new(VMLINUX_BTF)).unwrap();
        assert!(btf.function("tcp_sendmsg").is_some());
        // A struct of that name is no function.
        assert_eq!(btf.function("sock_common"), None);
        assert_eq!(btf.function("zerohop_no_such_function"), None);
    }

    #[test]
    fn a_missing_field_is_an_error_naming_it() {
        let btf = Btf::from_file(VMLINUX_BTF).unwrap();
        let error = member_offset(&btf, "tcp_sock", "no_such_field").unwrap_err();
        assert!(
            error.to_string().contains("no field no_such_field"),
            "{error}"
        );
    }
}
