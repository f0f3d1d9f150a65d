// The `pyoptim._C` Python module: a bare CPython module (no pybind11) with no functions. Importing
// it loads this library, whose static initializers register the ops (ops/library.cpp); Python
// calls them as torch.ops.pyoptim.* (pytorch/extension-cpp's pattern).
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
