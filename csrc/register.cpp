// Registers the op schemas (csrc/schemas.h) in the `fastadv` namespace and makes the library
// importable as the Python module fastadv._C.
#include <Python.h>

#include "schemas.h"

// `import fastadv._C` loads this library, which registers the ops; the module itself is empty,
// so no pybind11 is compiled.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(fastadv, m) {
  fastadv::define_step_ops(m);
  fastadv::define_cpu_isa_ops(m);
}
