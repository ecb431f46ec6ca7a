#include "server/common/flag_help.h"

#include "absl/flags/commandlineflag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace ringattn::server {
namespace {

constexpr size_t kWidth = 80;
constexpr absl::string_view kIndent = "      ";

// `text` in lines of at most kWidth, each after kIndent.
void AppendWrapped(absl::string_view text, std::string& out) {
  std::string line;
  for (absl::string_view word : absl::StrSplit(text, ' ', absl::SkipEmpty())) {
    if (!line.empty() && kIndent.size() + line.size() + 1 + word.size() > kWidth) {
      absl::StrAppend(&out, kIndent, line, "\n");
      line.clear();
    }
    absl::StrAppend(&line, line.empty() ? "" : " ", word);
  }
  if (!line.empty()) absl::StrAppend(&out, kIndent, line, "\n");
}

}  // namespace

std::string FlagHelp(absl::string_view usage, const std::vector<FlagGroup>& groups) {
  std::string out = absl::StrCat(usage, "\n");
  for (const FlagGroup& group : groups) {
    absl::StrAppend(&out, "\n", group.title, ":\n");
    for (const std::string& name : group.flags) {
      const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
      if (flag == nullptr) {
        absl::StrAppend(&out, "  --", name, " (not defined in this binary)\n");
        continue;
      }
      const std::string def = flag->DefaultValue();
      absl::StrAppend(&out, "  --", name, def.empty() ? "" : absl::StrCat("=", def), "\n");
      AppendWrapped(flag->Help(), out);
    }
  }
  absl::StrAppend(&out,
                  "\nFlags also come from a file: --flagfile=PATH. --helpfull lists every\n"
                  "flag linked in, the libraries' included.\n");
  return out;
}

bool HelpRequested(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const absl::string_view a = argv[i];
    if (a == "--") return false;
    if (a == "--help" || a == "-help" || a == "--helpshort" || a == "-helpshort" || a == "-h") {
      return true;
    }
  }
  return false;
}

}  // namespace ringattn::server
