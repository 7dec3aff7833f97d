pub fn run(_b: &crate::Binaries) -> anyhow::Result<()> {
    anyhow::bail!("demo: not yet")
}
