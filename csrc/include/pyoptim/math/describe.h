// What an optimizer's description tells the dense-optimizer machinery about its
// hyper-parameters (Note [Dense optimizers] in pyoptim/dense.h). Torch-free.
#pragma once

namespace pyoptim {
namespace math {

// One per-group hyper-parameter: its name and torch.optim's check, with torch's message
// ("<message><value>", a ValueError), run by the op before anything is written.
struct HyperCheck {
  enum Kind { kNonNegative, kUnitInterval };  // x >= 0;  0 <= x < 1
  const char* name;
  const char* message;
  Kind kind;
};

}  // namespace math
}  // namespace pyoptim
