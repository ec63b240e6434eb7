// The extension's Python module. Calls come straight through pybind11 (about a microsecond):
// a torch.library op taking the packed weight as a script object cost several times that per
// call, which small layers cannot afford. torch.compile reaches these calls through
// quantcore.call_in_graph, so they need no op schema of their own.
#include <torch/extension.h>

#if __has_include(<torch/headeronly/version.h>)
#include <torch/headeronly/version.h>
#else
#include <torch/version.h>
#endif

#include <memory>
#include <string>

#include "packed_linear.h"
#include "packed_recurrent.h"

namespace {

std::string torch_version() {
  return std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
         std::to_string(TORCH_VERSION_PATCH);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  using quantcore_int8::PackedLinear;
  using quantcore_int8::PackedRecurrent;
  m.doc() = "quantcore's native int8 CPU kernels (fbgemm GEMMs, per-token activations)";
  m.def("torch_version", &torch_version, "the torch version this extension was built against");
  m.def("cpu_supported", &quantcore_int8::cpu_supported, "whether fbgemm runs on this CPU");

  py::class_<PackedLinear, std::shared_ptr<PackedLinear>>(m, "PackedLinear")
      .def(py::init<const at::Tensor&, const at::Tensor&, int64_t, bool>(), py::arg("weight"),
           py::arg("scales"), py::arg("bits"), py::arg("symmetric"))
      .def("unpack", &PackedLinear::unpack, "the exact int8 weight, from the packed copy")
      .def_property_readonly("in_features", &PackedLinear::in_features)
      .def_property_readonly("out_features", &PackedLinear::out_features);
  m.def(
      "linear",
      [](const at::Tensor& x, const PackedLinear& packed, const std::optional<at::Tensor>& bias) {
        return packed.forward(x, bias);
      },
      py::arg("x"), py::arg("packed"), py::arg("bias"), py::call_guard<py::gil_scoped_release>(),
      "float32 [..., in] -> float32 [..., out]: per-token quantization, int8 GEMM, epilogue");

  py::class_<PackedRecurrent, std::shared_ptr<PackedRecurrent>>(m, "PackedRecurrent")
      .def(py::init<const std::string&, int64_t, int64_t, bool>(), py::arg("mode"),
           py::arg("hidden_size"), py::arg("num_layers"), py::arg("bidirectional"))
      .def("add_cell", &PackedRecurrent::add_cell, py::arg("ih"), py::arg("hh"),
           py::arg("bias_ih"), py::arg("bias_hh"))
      .def("add_projection", &PackedRecurrent::add_projection, py::arg("hr"))
      .def("forward", &PackedRecurrent::forward, py::arg("x"), py::arg("h0"), py::arg("c0"),
           py::arg("lengths"), py::call_guard<py::gil_scoped_release>());
}
