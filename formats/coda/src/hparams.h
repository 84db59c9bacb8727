// Conversion between ModelConfig and the FlatBuffer HParams table (private to formats/coda).
#pragma once

#include <flatbuffers/flatbuffers.h>

#include "coda/model_config.h"
#include "coda_generated.h"

namespace coda {

flatbuffers::Offset<fb::HParams> WriteHParams(flatbuffers::FlatBufferBuilder& b, const ModelConfig& c);
Result<ModelConfig> ReadHParams(const fb::HParams& h);

// Number of weight slots, inputs and outputs of each op, as documented in coda.fbs.
struct OpArity {
  int weights;  // -1: depends on the model (MoeExperts: 3 x n_routed_experts)
  int inputs;
  int outputs;
};
OpArity ArityOf(fb::OpType op);

}  // namespace coda
