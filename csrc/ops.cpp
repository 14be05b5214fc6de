// Registers the pluginedit ops with torch.library (schema + CPU kernels; CUDA kernels register
// from class_moments_cuda.cu when built with CUDA). The Python side (pluginedit/ops/<op>.py)
// adds the fake (meta) implementations so torch.compile can trace the ops.
#include <Python.h>
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

namespace pluginedit {
std::tuple<at::Tensor, at::Tensor> class_moments_cpu(const at::Tensor&, const at::Tensor&, int64_t, double,
                                                     const c10::optional<at::Tensor>&);
std::tuple<at::Tensor, at::Tensor> gram_cpu(const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
                                            at::IntArrayRef, at::IntArrayRef);
}  // namespace pluginedit

TORCH_LIBRARY(pluginedit, m) {
  // counts [K] float64, sums [K, C, 6] float64 (features s, s^2, s^3, s^4, e, e^2).
  m.def("class_moments(Tensor x, Tensor labels, int num_classes, float gamma=1.0, Tensor? shift=None)"
        " -> (Tensor, Tensor)");
  // G [D, D] float32, s [D] float32; kernel_size=[] means a linear input [..., D].
  m.def("gram(Tensor x, int[] kernel_size, int[] stride, int[] padding, int[] dilation) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(pluginedit, CPU, m) {
  m.impl("class_moments", &pluginedit::class_moments_cpu);
  m.impl("gram", &pluginedit::gram_cpu);
}

// A plain Python module so `import pluginedit._C` loads the library (and runs the registrations
// above) without pulling pybind11 into the build.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", "pluginedit compiled ops", -1, nullptr};
  return PyModule_Create(&def);
}
