// Dispatch over the three floating dtypes of the contract (not double, unlike AT_DISPATCH_*).
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

namespace fastadv {

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<T>{}) with T the C++ type of `dtype`.
template <typename F>
decltype(auto) dispatch_float_dtype(c10::ScalarType dtype, const char* what, F&& f) {
  switch (dtype) {
    case c10::kFloat:
      return f(TypeTag<float>{});
    case c10::kHalf:
      return f(TypeTag<c10::Half>{});
    case c10::kBFloat16:
      return f(TypeTag<c10::BFloat16>{});
    default:
      TORCH_CHECK(false, what, ": unsupported dtype ", dtype);
  }
}

}  // namespace fastadv
