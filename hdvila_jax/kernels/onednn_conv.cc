// oneDNN 2-D convolution as XLA FFI handlers for XLA:CPU: NHWC images, HWIO kernels, float32 or
// bfloat16, symmetric zero padding, equal strides. Three handlers, one per pass:
//   HdvilaOnednnConvForward         (x, w)  -> y
//   HdvilaOnednnConvBackwardData    (dy, w) -> dx
//   HdvilaOnednnConvBackwardWeights (x, dy) -> dw
// Built and loaded by hdvila_jax/kernels/onednn_conv.py. A primitive is created once per shape and
// pass and cached; each call gets its own scratchpad, so concurrent calls are safe.
#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;

namespace {

enum Pass : int64_t { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

// n, h, w, c (image), kh, kw, o (kernel), stride, pad, data type, pass.
using Key = std::array<int64_t, 11>;

struct Geometry {
  memory::dims image, weights, map, strides, pad_l, pad_r;
  memory::data_type type;
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

int64_t OutputSize(int64_t size, int64_t k, int64_t stride, int64_t pad) {
  return (size + 2 * pad - k) / stride + 1;
}

// oneDNN wants the right padding that the output size implies exactly (it may be below `pad`).
Geometry MakeGeometry(const Key& key) {
  const int64_t n = key[0], h = key[1], w = key[2], c = key[3], kh = key[4], kw = key[5], o = key[6],
                s = key[7], p = key[8];
  const int64_t oh = OutputSize(h, kh, s, p), ow = OutputSize(w, kw, s, p);
  return {{n, c, h, w}, {o, c, kh, kw}, {n, o, oh, ow}, {s, s}, {p, p},
          {(oh - 1) * s + kh - h - p, (ow - 1) * s + kw - w - p}, static_cast<memory::data_type>(key[9])};
}

memory::desc Nhwc(const memory::dims& dims, memory::data_type type) {
  return memory::desc(dims, type, memory::format_tag::nhwc);
}
memory::desc Hwio(const memory::dims& dims, memory::data_type type) {
  return memory::desc(dims, type, memory::format_tag::hwio);
}
memory::desc Any(const memory::dims& dims, memory::data_type type) {
  return memory::desc(dims, type, memory::format_tag::any);
}

struct Plan {
  dnnl::primitive primitive;
  memory::desc weights;  // the layout the primitive wants its (diff) weights in
  memory::desc scratchpad;
};

template <typename Primitive, typename PrimitiveDesc>
Plan MakePlan(const PrimitiveDesc& pd, const memory::desc& weights) {
  return {Primitive(pd), weights, pd.scratchpad_desc()};
}

Plan CreatePlan(const Key& key) {
  const Geometry g = MakeGeometry(key);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  const auto algo = dnnl::algorithm::convolution_direct;
  dnnl::convolution_forward::primitive_desc forward(
      Engine(), dnnl::prop_kind::forward_training, algo, Nhwc(g.image, g.type), Any(g.weights, g.type),
      Nhwc(g.map, g.type), g.strides, g.pad_l, g.pad_r, attr);
  switch (key[10]) {
    case kForward:
      return MakePlan<dnnl::convolution_forward>(forward, forward.weights_desc());
    case kBackwardData: {
      dnnl::convolution_backward_data::primitive_desc pd(
          Engine(), algo, Nhwc(g.image, g.type), Any(g.weights, g.type), Nhwc(g.map, g.type), g.strides,
          g.pad_l, g.pad_r, forward, attr);
      return MakePlan<dnnl::convolution_backward_data>(pd, pd.weights_desc());
    }
    default: {
      dnnl::convolution_backward_weights::primitive_desc pd(
          Engine(), algo, Nhwc(g.image, g.type), Any(g.weights, g.type), Nhwc(g.map, g.type), g.strides,
          g.pad_l, g.pad_r, forward, attr);
      return MakePlan<dnnl::convolution_backward_weights>(pd, pd.diff_weights_desc());
    }
  }
}

const Plan& GetPlan(const Key& key) {
  static std::mutex mutex;
  static std::map<Key, std::unique_ptr<Plan>> plans;
  std::lock_guard<std::mutex> lock(mutex);
  std::unique_ptr<Plan>& plan = plans[key];
  if (!plan) plan = std::make_unique<Plan>(CreatePlan(key));
  return *plan;
}

// Runs one pass. `image` is x (dx for kBackwardData), `weights` w (dw for kBackwardWeights),
// `map` y (dy for the backward passes).
void Run(const Key& key, void* image, void* weights, void* map) {
  const Geometry g = MakeGeometry(key);
  const Plan& plan = GetPlan(key);
  const auto pass = key[10];
  dnnl::stream stream(Engine());
  memory image_mem(Nhwc(g.image, g.type), Engine(), image);
  memory map_mem(Nhwc(g.map, g.type), Engine(), map);
  memory hwio(Hwio(g.weights, g.type), Engine(), weights);
  const bool reorder = plan.weights != hwio.get_desc();
  memory weights_mem = reorder ? memory(plan.weights, Engine()) : hwio;
  if (reorder && pass != kBackwardWeights) dnnl::reorder(hwio, weights_mem).execute(stream, hwio, weights_mem);
  // Uninitialised: oneDNN writes its scratchpad before it reads it (a std::vector would zero it).
  std::unique_ptr<uint8_t[]> scratch(new uint8_t[plan.scratchpad.get_size()]);
  memory scratch_mem(plan.scratchpad, Engine(), scratch.get());
  const int image_arg = pass == kBackwardData ? DNNL_ARG_DIFF_SRC : DNNL_ARG_SRC;
  const int weights_arg = pass == kBackwardWeights ? DNNL_ARG_DIFF_WEIGHTS : DNNL_ARG_WEIGHTS;
  const int map_arg = pass == kForward ? DNNL_ARG_DST : DNNL_ARG_DIFF_DST;
  plan.primitive.execute(stream, {{image_arg, image_mem}, {weights_arg, weights_mem}, {map_arg, map_mem},
                                  {DNNL_ARG_SCRATCHPAD, scratch_mem}});
  if (reorder && pass == kBackwardWeights) dnnl::reorder(weights_mem, hwio).execute(stream, weights_mem, hwio);
  stream.wait();
}

// oneDNN's data type for `type`; false if it is not float32 or bfloat16.
bool DnnlType(ffi::DataType type, memory::data_type* out) {
  if (type == ffi::DataType::F32) *out = memory::data_type::f32;
  else if (type == ffi::DataType::BF16) *out = memory::data_type::bf16;
  else return false;
  return true;
}

// Checks the three buffers against each other and runs `pass` on them.
ffi::Error Convolve(Pass pass, ffi::AnyBuffer image, ffi::AnyBuffer weights, ffi::AnyBuffer map, int64_t stride,
                    int64_t pad) {
  const auto x = image.dimensions(), w = weights.dimensions(), y = map.dimensions();
  if (x.size() != 4 || w.size() != 4 || y.size() != 4) {
    return ffi::Error::InvalidArgument("oneDNN convolution: image, kernel and output must have rank 4");
  }
  if (image.element_type() != weights.element_type() || image.element_type() != map.element_type()) {
    return ffi::Error::InvalidArgument("oneDNN convolution: image, kernel and output dtypes differ");
  }
  memory::data_type type;
  if (!DnnlType(image.element_type(), &type)) {
    return ffi::Error::InvalidArgument("oneDNN convolution: only float32 and bfloat16 are supported");
  }
  if (w[2] != x[3] || y[3] != w[3] || y[0] != x[0] || y[1] != OutputSize(x[1], w[0], stride, pad) ||
      y[2] != OutputSize(x[2], w[1], stride, pad) || stride < 1 || pad < 0) {
    return ffi::Error::InvalidArgument("oneDNN convolution: inconsistent shapes, stride or padding");
  }
  const Key key = {x[0], x[1], x[2], x[3], w[0], w[1], w[3], stride, pad, static_cast<int64_t>(type), pass};
  try {
    Run(key, image.untyped_data(), weights.untyped_data(), map.untyped_data());
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN convolution: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y, int64_t stride, int64_t pad) {
  return Convolve(kForward, x, w, *y, stride, pad);
}

ffi::Error BackwardData(ffi::AnyBuffer dy, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> dx, int64_t stride,
                        int64_t pad) {
  return Convolve(kBackwardData, *dx, w, dy, stride, pad);
}

ffi::Error BackwardWeights(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dw, int64_t stride,
                           int64_t pad) {
  return Convolve(kBackwardWeights, x, *dw, dy, stride, pad);
}

}  // namespace

#define HDVILA_CONV_BINDING                                                                            \
  ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>().Attr<int64_t>("stride") \
      .Attr<int64_t>("pad")

XLA_FFI_DEFINE_HANDLER_SYMBOL(HdvilaOnednnConvForward, Forward, HDVILA_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(HdvilaOnednnConvBackwardData, BackwardData, HDVILA_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(HdvilaOnednnConvBackwardWeights, BackwardWeights, HDVILA_CONV_BINDING);
