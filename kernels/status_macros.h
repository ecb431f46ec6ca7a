#ifndef RINGATTN_KERNELS_STATUS_MACROS_H_
#define RINGATTN_KERNELS_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"

// Returns from the enclosing function if `expr` (an absl::Status) is an error.
#define RINGATTN_RETURN_IF_ERROR(expr)                                    \
  do {                                                                    \
    if (absl::Status ringattn_status_ = (expr); !ringattn_status_.ok()) { \
      return ringattn_status_;                                            \
    }                                                                     \
  } while (false)

#define RINGATTN_CONCAT_INNER_(a, b) a##b
#define RINGATTN_CONCAT_(a, b) RINGATTN_CONCAT_INNER_(a, b)

// Assigns the value of `rexpr` (an absl::StatusOr) to `lhs`, or returns its
// error from the enclosing function.
#define RINGATTN_ASSIGN_OR_RETURN(lhs, rexpr) \
  RINGATTN_ASSIGN_OR_RETURN_IMPL_(RINGATTN_CONCAT_(ringattn_or_, __LINE__), lhs, rexpr)

// NOLINTBEGIN(bugprone-macro-parentheses): lhs is a declaration.
#define RINGATTN_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, rexpr) \
  auto tmp = (rexpr);                                    \
  if (!tmp.ok()) return tmp.status();                    \
  lhs = std::move(*tmp)
// NOLINTEND(bugprone-macro-parentheses)

#endif  // RINGATTN_KERNELS_STATUS_MACROS_H_
