#ifndef RINGATTN_SERVER_COMMON_FLAG_HELP_H_
#define RINGATTN_SERVER_COMMON_FLAG_HELP_H_

#include <string>
#include <vector>

#include "absl/strings/string_view.h"

// A daemon's --help: its own flags in groups, each with its default and help
// text. absl's --help lists flags by source file, and matches none of a
// daemon's files by name; --helpfull still lists every flag linked in.

namespace ringattn::server {

struct FlagGroup {
  std::string title;
  std::vector<std::string> flags;  // Names without the dashes.
};

// The usage message, then each group with its flags.
std::string FlagHelp(absl::string_view usage, const std::vector<FlagGroup>& groups);

// True when argv asks for help: --help, -help, --helpshort, -helpshort or -h
// before any "--".
bool HelpRequested(int argc, char** argv);

}  // namespace ringattn::server

#endif  // RINGATTN_SERVER_COMMON_FLAG_HELP_H_
