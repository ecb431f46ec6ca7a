#include "client/cli/usage.h"

#include <algorithm>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace ringattn::client::cli {
namespace {

constexpr size_t kWidth = 80;
constexpr absl::string_view kIndent = "      ";

struct FlagGroup {
  absl::string_view title;
  std::vector<absl::string_view> flags;
};

// Every flag of the CLI, in the groups help shows them in.
const std::vector<FlagGroup>& Groups() {
  static const auto* groups = new std::vector<FlagGroup>{
      {"Cluster", {"coordinator", "shm"}},
      {"Local cluster", {"cp", "worker_threads"}},
      {"Files",
       {"q", "k", "v", "doc_ids", "vision_groups", "padding_mask", "dout", "handle", "out_dir",
        "keep_session"}},
      {"Hugging Face batch",
       {"attention_mask", "mm_token_type_ids", "packed_seq_ids", "input_ids", "inputs_embeds",
        "labels", "loss_mask", "position_ids", "pad_token_id", "prepare_cp", "shards"}},
      {"Shape and dtype", {"dtype", "batch", "heads", "kv_heads", "seq_len", "head_dim", "seed"}},
      {"Layer", {"sliding", "window", "scale", "layout"}},
      {"Timing", {"iterations"}},
      {"Security",
       {"tls", "tls_ca_file", "tls_cert_file", "tls_key_file", "tls_server_name", "auth_token_file",
        "tls_require_client_cert", "cluster_token_file"}},
  };
  return *groups;
}

using Flags = std::vector<absl::string_view>;

// `flags` and then the security flags a client of a running cluster takes.
Flags WithClientSecurity(Flags flags) {
  for (absl::string_view f : {"tls", "tls_ca_file", "tls_cert_file", "tls_key_file",
                              "tls_server_name", "auth_token_file"}) {
    flags.push_back(f);
  }
  return flags;
}

// The same for a local cluster's daemons.
Flags WithLocalSecurity(Flags flags) {
  for (absl::string_view f : {"tls_ca_file", "tls_cert_file", "tls_key_file",
                              "tls_require_client_cert", "auth_token_file", "cluster_token_file"}) {
    flags.push_back(f);
  }
  return flags;
}

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

void AppendFlag(absl::string_view name, std::string& out) {
  const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
  if (flag == nullptr) {
    absl::StrAppend(&out, "  --", name, " (not defined in this binary)\n");
    return;
  }
  const std::string def = flag->DefaultValue();
  absl::StrAppend(&out, "  --", name, def.empty() ? "" : absl::StrCat("=", def), "\n");
  AppendWrapped(flag->Help(), out);
}

// The groups' flags that `keep` admits, under their group titles.
template <typename Keep>
void AppendGroups(Keep keep, std::string& out) {
  for (const FlagGroup& group : Groups()) {
    bool titled = false;
    for (absl::string_view name : group.flags) {
      if (!keep(name)) continue;
      if (!titled) absl::StrAppend(&out, "\n", group.title, ":\n");
      titled = true;
      AppendFlag(name, out);
    }
  }
}

}  // namespace

const std::vector<Command>& Commands() {
  static const auto* commands = new std::vector<Command>{
      {"demo", "start a local cluster, run a Gemma-4-like batch, check it, stop the cluster",
       "ringattn demo [--cp=N] [--seq_len=S] [--dtype=FP32|BF16|FP16]",
       "Starts a coordinator and --cp CPU workers on 127.0.0.1, sends a Gemma-4-like batch (two "
       "packed documents, one image block, right padding) through a sliding and a full layer, "
       "forward and backward, checks every result against the fp64 oracle, prints errors, "
       "throughput and per-rank step times, and stops the cluster. The default command.",
       WithLocalSecurity({"cp", "worker_threads", "dtype", "batch", "heads", "kv_heads", "seq_len",
                          "window", "seed", "shm", "tls", "tls_server_name"})},
      {"serve", "start a local cluster and keep it running until Ctrl-C", "ringattn serve [--cp=N]",
       "Starts a coordinator and --cp CPU workers on 127.0.0.1, prints their metrics addresses "
       "and the coordinator's address, and stops them on Ctrl-C or SIGTERM.",
       WithLocalSecurity({"cp", "worker_threads"})},
      {"status", "show a running cluster's ring, workers and open sessions",
       "ringattn status --coordinator=HOST:PORT",
       "Prints the ring's size, whether it is ready, its generation, the open sessions and each "
       "worker's rank, address and health.",
       WithClientSecurity({"coordinator"})},
      {"synthetic", "the demo's batch against a running cluster",
       "ringattn synthetic --coordinator=HOST:PORT [--seq_len=S] [--dtype=FP32|BF16|FP16]",
       "Sends the demo's batch through a running cluster and checks it against the fp64 oracle; "
       "exits 1 when a result is out of tolerance.",
       WithClientSecurity({"coordinator", "dtype", "batch", "heads", "kv_heads", "seq_len",
                           "window", "seed", "shm"})},
      {"forward", "Q, K, V from .npy files -> out.npy, lse.npy and a session handle",
       "ringattn forward --coordinator=HOST:PORT --q=q.npy --k=k.npy --v=v.npy\n"
       "    [--doc_ids=d.npy] [--vision_groups=g.npy] [--padding_mask=p.npy]\n"
       "    [--attention_mask=m.npy] [--mm_token_type_ids=t.npy] [--packed_seq_ids=s.npy]\n"
       "    [--sliding --window=W] [--scale=X] [--layout=auto|contiguous|zigzag] [--out_dir=DIR]",
       "Checks the files' dtypes (against --dtype when given) and that --out_dir is writable "
       "before sending, prints the session handle as soon as the forward returns, then writes "
       "out.npy [B,H,S,D] in the input dtype and lse.npy [B,H,S] float32. When writing fails "
       "the session is released unless --keep_session. The metadata may be given as a Hugging "
       "Face batch has it (--attention_mask, --mm_token_type_ids, --packed_seq_ids): the "
       "coordinator derives padding, vision groups and documents; a 4-D mask must be exactly "
       "the layer's mask, and one given with its explicit counterpart must agree with it.",
       WithClientSecurity({"coordinator", "q", "k", "v", "doc_ids", "vision_groups", "padding_mask",
                           "attention_mask", "mm_token_type_ids", "packed_seq_ids", "out_dir",
                           "keep_session", "dtype", "sliding", "window", "scale", "shm", "layout"})},
      {"prepare", "a training batch from .npy files -> padded tensors and per-rank shards",
       "ringattn prepare --coordinator=HOST:PORT --input_ids=ids.npy | --inputs_embeds=e.npy\n"
       "    --labels=l.npy | --loss_mask=m.npy [--position_ids=p.npy]\n"
       "    [--attention_mask=a.npy] [--mm_token_type_ids=t.npy] [--packed_seq_ids=s.npy]\n"
       "    [--pad_token_id=N] [--prepare_cp=N] [--shards] [--out_dir=DIR]",
       "Sends the batch to the coordinator's PrepareBatch (SPEC section 1) and writes what the "
       "ring computes with to --out_dir: every input padded to P, a multiple of 2 * cp, plus "
       "position_ids, padding_mask, doc_ids and vision_groups, as <name>.npy; with --shards "
       "also rank r's contiguous slice of each as rank<r>_<name>.npy. Without --prepare_cp, for "
       "the coordinator's ring.",
       WithClientSecurity({"coordinator", "input_ids", "inputs_embeds", "labels", "loss_mask",
                           "position_ids", "attention_mask", "mm_token_type_ids", "packed_seq_ids",
                           "pad_token_id", "prepare_cp", "shards", "out_dir"})},
      {"backward", "dO of a session from an .npy file -> dq.npy, dk.npy, dv.npy",
       "ringattn backward --coordinator=HOST:PORT --handle=HANDLE --dout=dout.npy [--out_dir=DIR]",
       "Sends dO [B,H,S,D] in the forward's dtype for the session forward printed and writes "
       "dq.npy, dk.npy and dv.npy (float32) to --out_dir, which is checked before sending. The "
       "session stays open for another backward until released or expired.",
       WithClientSecurity({"coordinator", "handle", "dout", "out_dir", "kv_heads", "dtype"})},
      {"release", "free a session's memory on the workers",
       "ringattn release --coordinator=HOST:PORT --handle=HANDLE",
       "Releases the session; NOT_FOUND for a handle that is unknown, already released or "
       "expired.",
       WithClientSecurity({"coordinator", "handle"})},
      {"bench", "time forward + backward of a synthetic layer",
       "ringattn bench --coordinator=HOST:PORT [--seq_len=S] [--iterations=N]",
       "Sends one synthetic FP32 layer (one document) forward and backward --iterations times, "
       "printing each call's time and the best GFLOP/s.",
       WithClientSecurity({"coordinator", "batch", "heads", "kv_heads", "seq_len", "head_dim",
                           "sliding", "window", "iterations", "shm", "layout"})},
      {"help",
       "a command's usage and flags",
       "ringattn help [COMMAND]",
       "Without a command: every command and flag. `ringattn COMMAND --help` is the same as "
       "`ringattn help COMMAND`.",
       {}},
  };
  return *commands;
}

const Command* FindCommand(absl::string_view name) {
  for (const Command& c : Commands()) {
    if (c.name == name) return &c;
  }
  return nullptr;
}

std::string CommandNames() {
  std::vector<absl::string_view> names;
  for (const Command& c : Commands()) names.push_back(c.name);
  return absl::StrJoin(names, ", ");
}

std::string MainHelp() {
  std::string out =
      "ringattn: the command-line client of the ring-attention service.\n\n"
      "usage: ringattn COMMAND [flags]\n\nCommands:\n";
  for (const Command& c : Commands()) {
    absl::StrAppend(&out, "  ", c.name, std::string(std::max<size_t>(1, 11 - c.name.size()), ' '),
                    c.summary, "\n");
  }
  AppendGroups([](absl::string_view) { return true; }, out);
  absl::StrAppend(&out,
                  "\n`ringattn help COMMAND` or `ringattn COMMAND --help`: one command's usage\n"
                  "and flags. --helpfull lists every flag linked in, the libraries' included.\n");
  return out;
}

std::string CommandHelp(const Command& command) {
  std::string out = absl::StrCat("usage: ", command.usage, "\n\n");
  std::string description;
  AppendWrapped(command.description, description);
  // The description without the flag indent.
  for (absl::string_view line : absl::StrSplit(description, '\n', absl::SkipEmpty())) {
    absl::StrAppend(&out, line.substr(kIndent.size()), "\n");
  }
  AppendGroups(
      [&](absl::string_view name) {
        return std::find(command.flags.begin(), command.flags.end(), name) != command.flags.end();
      },
      out);
  return out;
}

}  // namespace ringattn::client::cli
