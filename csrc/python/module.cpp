// The `pyoptim._C` Python module: a bare CPython module (no pybind11) whose import registers the
// ops (their static initializers run when this library loads), plus one function, `_call`.
//
// Note [Fast op calls]
// torch.ops converts each argument through pybind11 and holds the GIL while the converted stack
// is dropped; with thousands of small tensors per step that costs more than the update itself.
// `_C._call(name, args)` calls the same dispatcher op (same kernels, autograd and in-place
// version bumps) with arguments given positionally in schema order: it converts tensor lists
// with the GIL held, releases the GIL for the call, and frees the stack after re-taking it.
// pyoptim/_ops.py uses it for the optimizer steps; torch.ops.pyoptim.* remains the public path.
#include <Python.h>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/python_variable.h>

#include <string>
#include <unordered_map>
#include <vector>

namespace pyoptim {
namespace {

[[noreturn]] void fail(const std::string& msg) { TORCH_CHECK_TYPE(false, msg); }

// Looked up once per name; only called with the GIL held, which guards the map.
const c10::OperatorHandle& find_op(const char* name) {
  static std::unordered_map<std::string, c10::OperatorHandle> ops;
  auto it = ops.find(name);
  if (it == ops.end()) {
    it = ops.emplace(name, c10::Dispatcher::singleton().findSchemaOrThrow(name, "")).first;
  }
  return it->second;
}

c10::IValue to_ivalue(PyObject* obj, const c10::Argument& arg) {
  const c10::TypePtr& type = arg.real_type();
  if (obj == Py_None) return c10::IValue();
  switch (type->kind()) {
    case c10::TypeKind::OptionalType:
    case c10::TypeKind::TensorType: {
      if (!THPVariable_Check(obj)) fail("expected a Tensor for " + arg.name());
      return c10::IValue(THPVariable_Unpack(obj));
    }
    case c10::TypeKind::FloatType: return c10::IValue(PyFloat_AsDouble(obj));
    case c10::TypeKind::IntType: return c10::IValue(static_cast<int64_t>(PyLong_AsLongLong(obj)));
    case c10::TypeKind::BoolType: return c10::IValue(PyObject_IsTrue(obj) == 1);
    case c10::TypeKind::ListType: {
      PyObject* seq = PySequence_Fast(obj, "expected a list");
      if (seq == nullptr) fail("expected a list for " + arg.name());
      const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
      PyObject** items = PySequence_Fast_ITEMS(seq);
      const auto elem = type->castRaw<c10::ListType>()->getElementType()->kind();
      c10::IValue out;
      if (elem == c10::TypeKind::TensorType) {
        c10::List<at::Tensor> list;
        list.reserve(n);
        for (Py_ssize_t i = 0; i < n; ++i) {
          if (!THPVariable_Check(items[i])) {
            Py_DECREF(seq);
            fail("expected a list of Tensors for " + arg.name());
          }
          list.push_back(THPVariable_Unpack(items[i]));
        }
        out = c10::IValue(std::move(list));
      } else if (elem == c10::TypeKind::IntType) {
        c10::List<int64_t> list;
        list.reserve(n);
        for (Py_ssize_t i = 0; i < n; ++i) list.push_back(PyLong_AsLongLong(items[i]));
        out = c10::IValue(std::move(list));
      } else {
        Py_DECREF(seq);
        fail("unsupported list argument " + arg.name());
      }
      Py_DECREF(seq);
      return out;
    }
    default: fail("unsupported argument type for " + arg.name());
  }
}

PyObject* call(PyObject* /*self*/, PyObject* args) {
  const char* name = nullptr;
  PyObject* op_args = nullptr;
  if (!PyArg_ParseTuple(args, "sO!", &name, &PyTuple_Type, &op_args)) return nullptr;
  torch::jit::Stack stack;
  try {
    const c10::OperatorHandle& op = find_op(name);
    const auto& schema_args = op.schema().arguments();
    const Py_ssize_t n = PyTuple_GET_SIZE(op_args);
    if (static_cast<size_t>(n) != schema_args.size()) {
      PyErr_Format(PyExc_TypeError, "%s takes %zd arguments, got %zd", name,
                   static_cast<Py_ssize_t>(schema_args.size()), n);
      return nullptr;
    }
    stack.reserve(n);
    for (Py_ssize_t i = 0; i < n; ++i) {
      stack.push_back(to_ivalue(PyTuple_GET_ITEM(op_args, i), schema_args[i]));
      if (PyErr_Occurred()) return nullptr;
    }
    // A second reference to every list: the boxed kernel then copies the tensors out instead of
    // taking the stack's, so no tensor's last C++ reference is dropped without the GIL (that
    // would make each one take the GIL to release its Python object).
    const torch::jit::Stack keep = stack;
    {
      PyThreadState* save = PyEval_SaveThread();  // release the GIL for the call
      try {
        op.callBoxed(stack);
      } catch (...) {
        PyEval_RestoreThread(save);
        throw;
      }
      PyEval_RestoreThread(save);
    }
    stack.clear();  // with the GIL held, see Note [Fast op calls]
  } catch (const c10::IndexError& e) {
    PyErr_SetString(PyExc_IndexError, e.what_without_backtrace());
    return nullptr;
  } catch (const c10::ValueError& e) {
    PyErr_SetString(PyExc_ValueError, e.what_without_backtrace());
    return nullptr;
  } catch (const c10::TypeError& e) {
    PyErr_SetString(PyExc_TypeError, e.what_without_backtrace());
    return nullptr;
  } catch (const c10::NotImplementedError& e) {
    PyErr_SetString(PyExc_NotImplementedError, e.what_without_backtrace());
    return nullptr;
  } catch (const c10::Error& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
    return nullptr;
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
  Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"_call", call, METH_VARARGS,
     "_call(name, args): call dispatcher op `name` with positional args (Note [Fast op calls])"},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace
}  // namespace pyoptim

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1,
                                          pyoptim::methods};
  return PyModule_Create(&module_def);
}
