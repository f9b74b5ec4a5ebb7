package opa

// InputValue exposes inputValue to the black-box tests and benchmarks.
var InputValue = inputValue
