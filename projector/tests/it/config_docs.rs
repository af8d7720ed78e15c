//! docs/configuration.md lists every option of `projector` (and of its subcommands) with its flag,
//! variable and default.

use clap::CommandFactory;

#[test]
fn the_configuration_reference_matches_the_options() {
    test_support::config_docs::assert_documented(projector::Config::command());
}
