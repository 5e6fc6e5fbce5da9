pub(crate) async fn run_cert(_c: CertCommand) -> anyhow::Result<()> { Ok(()) }
#[derive(clap::Subcommand, Debug)]
pub(crate) enum CertCommand { List }
