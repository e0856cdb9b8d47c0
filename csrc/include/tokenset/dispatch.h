// Runtime values to compile-time constants (as flash-attention's static_switch.h): each switch calls the lambda
// body with a constexpr name bound, so one templated kernel body serves every case.
//
//   TOKENSET_BOOL_SWITCH(p.argmax != nullptr, kArgmax, [&] { run<kArgmax>(p); });
//   TOKENSET_FLOAT_SWITCH(p.documents.dtype(), kDType, [&] { launch<cuda_type_t<kDType>>(p); });
//   TOKENSET_DIM_SWITCH(dim, kDim, [&] { score<kDim>(...); });   // kDim = 0: any other width
#pragma once

#include "tokenset/array.h"
#include "tokenset/check.h"

#define TOKENSET_BOOL_SWITCH(COND, CONST_NAME, ...) \
  [&] {                                             \
    if (COND) {                                     \
      constexpr bool CONST_NAME = true;             \
      return __VA_ARGS__();                         \
    } else {                                        \
      constexpr bool CONST_NAME = false;            \
      return __VA_ARGS__();                         \
    }                                               \
  }()

// Token value dtypes: float32, float16, bfloat16. Anything else is a TypeError (validate() rejects it earlier).
#define TOKENSET_FLOAT_SWITCH(DTYPE, CONST_NAME, ...)                                               \
  [&] {                                                                                             \
    switch (DTYPE) {                                                                                \
      case ::tokenset::DType::Float32: {                                                            \
        constexpr ::tokenset::DType CONST_NAME = ::tokenset::DType::Float32;                        \
        return __VA_ARGS__();                                                                       \
      }                                                                                             \
      case ::tokenset::DType::Float16: {                                                            \
        constexpr ::tokenset::DType CONST_NAME = ::tokenset::DType::Float16;                        \
        return __VA_ARGS__();                                                                       \
      }                                                                                             \
      case ::tokenset::DType::BFloat16: {                                                           \
        constexpr ::tokenset::DType CONST_NAME = ::tokenset::DType::BFloat16;                       \
        return __VA_ARGS__();                                                                       \
      }                                                                                             \
      default:                                                                                      \
        throw ::tokenset::TypeError(std::string("token values must be float32, float16 or bfloat16, got ") + \
                                    ::tokenset::dtype_name(DTYPE));                                 \
    }                                                                                               \
  }()

// The embedding widths of common late-interaction models as constants; kDim = 0 for any other width.
#define TOKENSET_DIM_CASE(CONST_NAME, VALUE, ...) \
  case VALUE: {                                   \
    constexpr int CONST_NAME = VALUE;             \
    return __VA_ARGS__();                         \
  }
#define TOKENSET_DIM_SWITCH(DIM, CONST_NAME, ...)          \
  [&] {                                                    \
    switch (DIM) {                                         \
      TOKENSET_DIM_CASE(CONST_NAME, 64, __VA_ARGS__)       \
      TOKENSET_DIM_CASE(CONST_NAME, 96, __VA_ARGS__)       \
      TOKENSET_DIM_CASE(CONST_NAME, 128, __VA_ARGS__)      \
      TOKENSET_DIM_CASE(CONST_NAME, 256, __VA_ARGS__)      \
      TOKENSET_DIM_CASE(CONST_NAME, 384, __VA_ARGS__)      \
      TOKENSET_DIM_CASE(CONST_NAME, 512, __VA_ARGS__)      \
      TOKENSET_DIM_CASE(CONST_NAME, 768, __VA_ARGS__)      \
      TOKENSET_DIM_CASE(CONST_NAME, 1024, __VA_ARGS__)     \
      default: {                                           \
        constexpr int CONST_NAME = 0;                      \
        return __VA_ARGS__();                              \
      }                                                    \
    }                                                      \
  }()
