//! What the agent reads from the running kernel's BTF: the byte offsets of
//! the `struct tcp_sock` fields the programs read (see ebpf/programs/src/tcp.rs).
//! Field names are stable across kernels; their offsets are not.

use std::path::Path;

use anyhow::{bail, Context, Result};
use btf_rs::{Btf, Type};

/// Where the kernel exposes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Byte offsets of the `struct tcp_sock` fields the programs read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSockOffsets {
    pub copied_seq: u32,
    pub write_seq: u32,
}

impl TcpSockOffsets {
    /// Reads them from the BTF file at `path` (normally [`VMLINUX_BTF`]).
    pub fn from_btf_file(path: &Path) -> Result<TcpSockOffsets> {
        let btf = Btf::from_file(path)
            .with_context(|| format!("reading the kernel's BTF from {}", path.display()))?;
        let offset = |field| {
            member_offset(&btf, "tcp_sock", field)
                .with_context(|| format!("struct tcp_sock.{field} in {}", path.display()))
        };
        Ok(TcpSockOffsets {
            copied_seq: offset("copied_seq")?,
            write_seq: offset("write_seq")?,
        })
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

    /// zerohop requires a kernel with BTF; the machine the tests run on has one.
    #[test]
    fn finds_the_tcp_sock_fields_of_the_running_kernel() {
        let offsets = TcpSockOffsets::from_btf_file(Path::new(VMLINUX_BTF)).unwrap();
        // Both sit well inside the struct, after struct inet_connection_sock,
        // and are distinct u32 fields.
        assert!(
            offsets.copied_seq > 500 && offsets.write_seq > 500,
            "{offsets:?}"
        );
        assert_ne!(offsets.copied_seq, offsets.write_seq);
        assert_eq!(offsets.copied_seq % 4, 0);
        assert_eq!(offsets.write_seq % 4, 0);
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
