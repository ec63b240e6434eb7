// The extension's Python module, quantcore_native._C. Calls come straight through pybind11
// (about a microsecond): a torch.library op taking the packed weight as a script object cost
// several times that per call, which small layers cannot afford. torch.compile reaches these
// calls through quantcore.call_in_graph, so they need no op schema of their own.
#include <torch/extension.h>

#if __has_include(<torch/headeronly/version.h>)
#include <torch/headeronly/version.h>
#else
#include <torch/version.h>
#endif

#include <memory>
#include <string>

#include "cpu_isa.h"
#include "embedding.h"
#include "fp16_linear.h"
#include "int8_linear.h"
#include "recurrent.h"

namespace {

std::string torch_version() {
  return std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
         std::to_string(TORCH_VERSION_PATCH);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  using namespace quantcore_native;
  m.doc() = "quantcore's native CPU kernels (fbgemm GEMMs; int8 with per-token activations, fp16)";
  m.def("torch_version", &torch_version, "the torch version this extension was built against");
  m.def("cpu_supported", &cpu_supported, "whether fbgemm runs on this CPU");
  m.def("fp16_supported", &fp16_supported, "whether this torch has fbgemm's fp16 packing");
  m.def("vector_isa", &isa_name,
        "the vector code the kernels run: avx512, avx2 or scalar (QUANTCORE_NATIVE_MAX_ISA caps it)");

  py::class_<NativeLinear, std::shared_ptr<NativeLinear>>(m, "NativeLinear")
      .def_property_readonly("in_features", &NativeLinear::in_features)
      .def_property_readonly("out_features", &NativeLinear::out_features);
  py::class_<Int8Linear, NativeLinear, std::shared_ptr<Int8Linear>>(m, "Int8Linear")
      .def(py::init<const at::Tensor&, const at::Tensor&, int64_t, bool>(), py::arg("weight"),
           py::arg("scales"), py::arg("bits"), py::arg("symmetric"))
      .def("unpack", &Int8Linear::unpack, "the exact int8 weight, from the packed copy")
      .def_property_readonly("on_huge_pages", &Int8Linear::on_huge_pages,
                             "whether the packed weight lies in memory asked for 2 MiB pages");
  py::class_<Fp16Linear, NativeLinear, std::shared_ptr<Fp16Linear>>(m, "Fp16Linear")
      .def(py::init<const at::Tensor&>(), py::arg("weight"))
      .def("unpack", &Fp16Linear::unpack, "the exact float16 weight, from the packed copy");
  m.def(
      "linear",
      [](const at::Tensor& x, const NativeLinear& packed, const std::optional<at::Tensor>& bias,
         int64_t activation) {
        return packed.forward(x, bias, activation_from_code(activation));
      },
      py::arg("x"), py::arg("packed"), py::arg("bias"), py::arg("activation") = 0,
      py::call_guard<py::gil_scoped_release>(),
      "[..., in] -> float32 [..., out] with the layer's packed weight, then the activation "
      "(ACTIVATION_CODES) in the same pass");

  m.def("embedding", &embedding, py::arg("table"), py::arg("scale"), py::arg("zero_point"),
        py::arg("input"), py::arg("max_norm"), py::arg("norm_type"),
        py::call_guard<py::gil_scoped_release>(),
        "float32 rows of an int8 (scale, zero point) or float16 table");
  m.def("embedding_bag", &embedding_bag, py::arg("table"), py::arg("scale"),
        py::arg("zero_point"), py::arg("input"), py::arg("offsets"),
        py::arg("per_sample_weights"), py::arg("mode"), py::arg("include_last_offset"),
        py::arg("padding_idx"), py::arg("max_norm"), py::arg("norm_type"),
        py::call_guard<py::gil_scoped_release>(),
        "embedding_bag (mode 0 sum, 1 mean, 2 max) over the table's dequantized rows");

  py::class_<Recurrent, std::shared_ptr<Recurrent>>(m, "Recurrent")
      .def(py::init<const std::string&, int64_t, int64_t, bool>(), py::arg("mode"),
           py::arg("hidden_size"), py::arg("num_layers"), py::arg("bidirectional"))
      .def("add_cell", &Recurrent::add_cell, py::arg("ih"), py::arg("hh"), py::arg("bias_ih"),
           py::arg("bias_hh"))
      .def("add_projection", &Recurrent::add_projection, py::arg("hr"))
      .def("forward", &Recurrent::forward, py::arg("x"), py::arg("h0"), py::arg("c0"),
           py::arg("lengths"), py::call_guard<py::gil_scoped_release>());
}
