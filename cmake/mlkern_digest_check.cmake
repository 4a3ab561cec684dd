# ctest helper: runs the test program BIN with 1 and then 2 OpenMP threads and
# fails unless both pass and print the same digest line (the kernels promise
# bitwise identical results for any thread count).
foreach(_threads 1 2)
  set(ENV{OMP_NUM_THREADS} ${_threads})
  execute_process(COMMAND "${BIN}" RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _out)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "${BIN} failed with ${_threads} thread(s):\n${_out}")
  endif()
  string(REGEX MATCH "digest [0-9a-f]+" _digest_${_threads} "${_out}")
endforeach()
if(_digest_1 STREQUAL "" OR NOT _digest_1 STREQUAL _digest_2)
  message(FATAL_ERROR "1 and 2 threads differ: '${_digest_1}' / '${_digest_2}'")
endif()
message(STATUS "1 and 2 threads bitwise identical (${_digest_1})")
