// CPU kernels of the pluginedit ops (CUDA kernels register from class_moments_cuda.cu when built
// with CUDA). Each op is defined once, in Python (pluginedit/ops/<op>.py: schema, reference,
// fake, Triton); the extension only adds kernels: the dispatcher prefers them to the Python one.
// The contract of every kernel is the reference's docstring: float64 results.
#include <Python.h>
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

namespace pluginedit {
std::tuple<at::Tensor, at::Tensor> class_moments_cpu(const at::Tensor&, const at::Tensor&, int64_t, double,
                                                     const c10::optional<at::Tensor>&);
std::tuple<at::Tensor, at::Tensor> gram_cpu(const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
                                            at::IntArrayRef, at::IntArrayRef);
at::Tensor class_maps_fold_cpu(at::Tensor&, at::Tensor&, const at::Tensor&, const at::Tensor&, bool);
std::tuple<at::Tensor, at::Tensor> class_maps_gram_cpu(const at::Tensor&, const at::Tensor&);
}  // namespace pluginedit

TORCH_LIBRARY_IMPL(pluginedit, CPU, m) {
  m.impl("class_moments", &pluginedit::class_moments_cpu);
  m.impl("gram", &pluginedit::gram_cpu);
  m.impl("class_maps_fold", &pluginedit::class_maps_fold_cpu);
  m.impl("class_maps_gram", &pluginedit::class_maps_gram_cpu);
}

// A plain Python module so `import pluginedit._C` loads the library (and runs the registrations
// above) without pulling pybind11 into the build.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", "pluginedit compiled ops", -1, nullptr};
  return PyModule_Create(&def);
}
