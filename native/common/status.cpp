#include "common/status.h"

namespace qv {

const char* code_name(Code c) {
  switch (c) {
    case Code::Ok: return "OK";
    case Code::InvalidArgument: return "INVALID_ARGUMENT";
    case Code::NotFound: return "NOT_FOUND";
    case Code::AlreadyExists: return "ALREADY_EXISTS";
    case Code::FailedPrecondition: return "FAILED_PRECONDITION";
    case Code::ResourceExhausted: return "RESOURCE_EXHAUSTED";
    case Code::OutOfRange: return "OUT_OF_RANGE";
    case Code::DataLoss: return "DATA_LOSS";
    case Code::Unavailable: return "UNAVAILABLE";
    case Code::Internal: return "INTERNAL";
  }
  return "INTERNAL";
}

}  // namespace qv
