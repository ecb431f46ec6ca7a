#ifndef RINGATTN_CLIENT_CLI_USAGE_H_
#define RINGATTN_CLIENT_CLI_USAGE_H_

#include <string>
#include <vector>

#include "absl/strings/string_view.h"

// The ringattn CLI's commands and what each takes, for `ringattn --help`,
// `ringattn help COMMAND` and `ringattn COMMAND --help`. Defaults and help
// text come from the flags themselves, so they cannot drift from the code.

namespace ringattn::client::cli {

struct Command {
  absl::string_view name;
  absl::string_view summary;      // One line, for the list of commands.
  absl::string_view usage;        // How to call it.
  absl::string_view description;  // What it does, what it writes.
  std::vector<absl::string_view> flags;
};

// Every command, in the order the list shows them.
const std::vector<Command>& Commands();
// nullptr for a name that is not a command.
const Command* FindCommand(absl::string_view name);
// "demo, serve, ...", for an error about an unknown command.
std::string CommandNames();

// Every command and every flag of the CLI, grouped.
std::string MainHelp();
// One command's usage and the flags it takes, grouped.
std::string CommandHelp(const Command& command);

}  // namespace ringattn::client::cli

#endif  // RINGATTN_CLIENT_CLI_USAGE_H_
