// Validate a glTF/GLB file with the Khronos glTF-Validator (npm package gltf-validator) and print
// its report's issue counts and messages as JSON. Usage: node gltf_validate.js VALIDATOR_DIR FILE
const fs = require("fs");
const validator = require(process.argv[2]);
const data = new Uint8Array(fs.readFileSync(process.argv[3]));
validator.validateBytes(data, { maxIssues: 100 })
  .then((report) => console.log(JSON.stringify(report.issues)))
  .catch((error) => { console.error(String(error)); process.exit(2); });
