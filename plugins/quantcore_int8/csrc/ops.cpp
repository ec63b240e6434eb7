// The extension's torch.library registrations and its Python module (import it to load the ops).
#include <Python.h>
#include <torch/library.h>

#if __has_include(<torch/headeronly/version.h>)
#include <torch/headeronly/version.h>
#else
#include <torch/version.h>
#endif

#include <string>

#include "packed_linear.h"
#include "packed_recurrent.h"

namespace quantcore_int8 {
namespace {

using Packed = c10::intrusive_ptr<PackedLinear>;

std::string torch_version() {
  return std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
         std::to_string(TORCH_VERSION_PATCH);
}

at::Tensor linear(const at::Tensor& x, const Packed& packed, const c10::optional<at::Tensor>& bias) {
  return packed->forward(x, bias);
}

}  // namespace
}  // namespace quantcore_int8

TORCH_LIBRARY_FRAGMENT(quantcore_int8, m) {
  using quantcore_int8::PackedLinear;
  m.class_<PackedLinear>("PackedLinear")
      .def(torch::init<at::Tensor, at::Tensor, int64_t, bool>())
      .def("unpack", &PackedLinear::unpack)
      .def("in_features", &PackedLinear::in_features)
      .def("out_features", &PackedLinear::out_features);
  using quantcore_int8::PackedRecurrent;
  m.class_<PackedRecurrent>("PackedRecurrent")
      .def(torch::init<std::string, int64_t, int64_t, bool>())
      .def("add_cell", &PackedRecurrent::add_cell)
      .def("add_projection", &PackedRecurrent::add_projection)
      .def("forward", &PackedRecurrent::forward);
  m.def("native_cpu_supported() -> bool", &quantcore_int8::cpu_supported);
  m.def("native_torch_version() -> str", &quantcore_int8::torch_version);
  m.def(
      "native_linear(Tensor x, __torch__.torch.classes.quantcore_int8.PackedLinear packed, "
      "Tensor? bias) -> Tensor",
      &quantcore_int8::linear);
}

extern "C" {
// `import quantcore_int8._native` loads the library, which registers the ops above.
PyMODINIT_FUNC PyInit__native(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
}
