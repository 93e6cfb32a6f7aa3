//! Checks on a command-line interface as a person meets it.

/// Every visible flag and argument, of `cmd` and of its visible subcommands, that has no help
/// text (`"<command> <argument>"`): `--help` is the manual, and a flag it does not explain is
/// one a newcomer has to guess.
pub fn arguments_without_help(mut cmd: clap::Command) -> Vec<String> {
    cmd.build();
    let mut missing = Vec::new();
    let mut commands = vec![cmd];
    while let Some(cmd) = commands.pop() {
        if cmd.is_hide_set() {
            continue;
        }
        for arg in cmd.get_arguments() {
            let builtin = matches!(arg.get_id().as_str(), "help" | "version");
            if !builtin && !arg.is_hide_set() && arg.get_help().is_none() {
                missing.push(format!("{} {}", cmd.get_name(), arg.get_id()));
            }
        }
        commands.extend(cmd.get_subcommands().cloned());
    }
    missing
}
