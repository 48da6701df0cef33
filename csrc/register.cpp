// All op schemas in one place. Kernels are registered per device in cpu/ and cuda/;
// fake (meta) implementations live in Python next to the public functions.
#include <Python.h>
#include <torch/library.h>

// `import fastadv._C` loads this library, which registers the ops below; the module itself is
// empty, so no pybind11 is compiled.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(fastadv, m) {
  // Parameters are either a float32 [Bp, Cp] tensor (per sample and/or channel) or, when the
  // tensor is None, the matching entry of `values`: (eps, alpha, lower, upper) for steps,
  // (eps, lower, upper) for projections.
  m.def(
      "linf_step_out(Tensor x_adv, Tensor grad, Tensor x, Tensor? eps, Tensor? alpha, Tensor? lower, "
      "Tensor? upper, float[] values, bool targeted, Tensor(a!) out) -> ()");
  m.def(
      "linf_project_out(Tensor x_adv, Tensor x, Tensor? eps, Tensor? lower, Tensor? upper, float[] values, "
      "Tensor(a!) out) -> ()");
  // L2: eps and alpha are per sample at most ([Bp, 1] tables).
  m.def(
      "l2_step_out(Tensor x_adv, Tensor grad, Tensor x, Tensor? eps, Tensor? alpha, Tensor? lower, "
      "Tensor? upper, float[] values, bool targeted, Tensor(a!) out) -> ()");
  m.def(
      "l2_project_out(Tensor x_adv, Tensor x, Tensor? eps, Tensor? lower, Tensor? upper, float[] values, "
      "Tensor(a!) out) -> ()");
}
