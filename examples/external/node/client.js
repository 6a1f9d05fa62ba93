#!/usr/bin/env node
// Evaluate anywhere, from Node.js: an external tuneyard study on the Branin function.
//
//   npm ci && node client.js 127.0.0.1:50051 [TRIALS]     # or TUNEYARD_ADDRESS=HOST:PORT
//
// The server suggests, judges and records; this process evaluates. Two loops run concurrently,
// each: SuggestTrials (one trial, leased to it) -> three steps of a local search from the trial's
// (x, y), each step's best value sent with ReportTrial (the lease renews; STOP ends the trial
// early) -> CompleteTrial. Once the server says study_done, GetStudy gives the best trial. The
// last line printed is that result as JSON.
//
// What any client that is not Python needs to know, all shown below:
//  - google.protobuf.Struct (Component.options, Trial.config) is not a plain object here: it is
//    {fields: {name: Value}}, a Value one of nullValue, numberValue, stringValue, boolValue,
//    structValue, listValue. toStruct / fromStruct convert. Mind the camelCase: proto-loader
//    brings the google/protobuf types precompiled, so keepCase does not reach their fields.
//  - Enums travel as their names with `enums: String`: TRIAL_COMPLETED, STOP, MINIMIZE.
//  - int64 fields (training.seed, int_range bounds, Study.epochs_spent) are strings with
//    `longs: String`, so no precision is lost; send them as strings or numbers.
//  - google.protobuf.Duration is {seconds, nanos} here. The "60s" form is proto3 JSON only
//    (grpcurl, the YAML/JSON spec files), which proto-loader objects are not.
//  - map<string, double> fields (metrics, final_metrics) are plain objects.
'use strict';

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTOS = path.resolve(__dirname, '..', '..', '..', 'protos');
const definition = protoLoader.loadSync('tuneyard/v1/service.proto', { // found under includeDirs
  includeDirs: [PROTOS], // google/protobuf/*.proto come with proto-loader
  keepCase: true, // study_id, not studyId: the proto's own field names
  enums: String,
  longs: String,
  defaults: true, // absent fields read as their defaults (study_done: false, trials: [])
  oneofs: true, // a Value says which field it holds in `kind`
});
const { TrainingService } = grpc.loadPackageDefinition(definition).tuneyard.v1;

// ---- google.protobuf.Struct <-> plain JavaScript values ----

function toValue(v) {
  if (v === null || v === undefined) return { nullValue: 'NULL_VALUE' };
  if (typeof v === 'number') return { numberValue: v };
  if (typeof v === 'string') return { stringValue: v };
  if (typeof v === 'boolean') return { boolValue: v };
  if (Array.isArray(v)) return { listValue: { values: v.map(toValue) } };
  return { structValue: toStruct(v) };
}

function toStruct(object) {
  return { fields: Object.fromEntries(Object.entries(object).map(([k, v]) => [k, toValue(v)])) };
}

function fromValue(value) {
  switch (value.kind) {
    case 'numberValue': return value.numberValue;
    case 'stringValue': return value.stringValue;
    case 'boolValue': return value.boolValue;
    case 'structValue': return fromStruct(value.structValue);
    case 'listValue': return value.listValue.values.map(fromValue);
    default: return null; // nullValue
  }
}

function fromStruct(struct) {
  return Object.fromEntries(Object.entries(struct?.fields ?? {}).map(([k, v]) => [k, fromValue(v)]));
}

// ---- the study ----

const STEPS = 3;
const BOUNDS = { x: [-5, 10], y: [0, 15] };

function spec(trials) {
  return {
    name: 'branin-node',
    external: { lease: { seconds: 60, nanos: 0 } }, // no report for 60 s: the trial ends FAILED (timeout)
    training: { epochs: STEPS, seed: '0' }, // epochs: the most steps a trial reports; seed is an int64
    search_space: Object.entries(BOUNDS).map(([name, [low, high]]) => ({ name, float_range: { low, high } })),
    searcher: { name: process.env.SEARCHER || 'tpe', options: toStruct({ n_startup_trials: 5 }) },
    objective: { metric: 'value', mode: 'MINIMIZE' },
    budget: { max_trials: trials, max_concurrent_trials: 2 },
  };
}

function branin(x, y) {
  const b = 5.1 / (4 * Math.PI ** 2), c = 5 / Math.PI, t = 1 / (8 * Math.PI);
  return (y - b * x ** 2 + c * x - 6) ** 2 + 10 * (1 - t) * Math.cos(x) + 10;
}

// One step of a compass search: the best of the point and its four neighbours at distance h.
function step(point, h) {
  const clip = (name, v) => Math.min(BOUNDS[name][1], Math.max(BOUNDS[name][0], v));
  const candidates = [[0, 0], [h, 0], [-h, 0], [0, h], [0, -h]].map(([dx, dy]) => {
    const x = clip('x', point.x + dx), y = clip('y', point.y + dy);
    return { x, y, value: branin(x, y) };
  });
  return candidates.reduce((best, c) => (c.value < best.value ? c : best));
}

function call(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + 30_000 }, (err, reply) => (err ? reject(err) : resolve(reply)));
  });
}

async function evaluate(client, studyId, trial) {
  let point = { ...fromStruct(trial.config), value: Infinity }; // {x: 3.2, y: 10.7}
  for (let s = 1; s <= STEPS; s++) {
    point = step(point, 0.5 / 2 ** (s - 1));
    const metrics = { value: point.value, x: point.x, y: point.y }; // map<string, double>
    const { decision } = await call(client, 'ReportTrial', { study_id: studyId, trial_id: trial.trial_id, step: s, metrics });
    if (decision === 'STOP') { // pruned, the study cancelled, or past its deadline: no metrics, the last step stands
      return call(client, 'CompleteTrial', { study_id: studyId, trial_id: trial.trial_id, state: 'TRIAL_COMPLETED' });
    }
  }
  return call(client, 'CompleteTrial', {
    study_id: studyId, trial_id: trial.trial_id, state: 'TRIAL_COMPLETED', metrics: { value: point.value },
  });
}

async function work(client, studyId, clientId) {
  for (;;) {
    const { trials, study_done } = await call(client, 'SuggestTrials', { study_id: studyId, count: 1, client_id: clientId });
    if (trials.length === 0) {
      if (study_done) return;
      await new Promise((resolve) => setTimeout(resolve, 100)); // the other loop holds the slots
      continue;
    }
    for (const trial of trials) {
      try {
        const ended = await evaluate(client, studyId, trial);
        console.log(`trial ${ended.trial_id} ${ended.state} value=${ended.objective_value} [${ended.device}]`);
      } catch (err) {
        if (err.code !== undefined) throw err; // a gRPC error: the calls themselves went wrong
        // The evaluation threw: say so (the searcher is told, budget.max_failures counts it).
        await call(client, 'CompleteTrial', {
          study_id: studyId, trial_id: trial.trial_id, state: 'TRIAL_FAILED', error: err.stack,
        });
      }
    }
  }
}

async function main() {
  const address = process.argv[2] || process.env.TUNEYARD_ADDRESS || '127.0.0.1:50051';
  const trials = Number(process.argv[3] || 12);
  const client = new TrainingService(address, grpc.credentials.createInsecure()); // loopback; TLS: createSsl
  const study = await call(client, 'CreateStudy', { spec: spec(trials), request_id: `node-${process.pid}-${Date.now()}` });
  console.log(`study ${study.study_id} on ${address}`);
  await Promise.all([work(client, study.study_id, `node-${process.pid}-1`), work(client, study.study_id, `node-${process.pid}-2`)]);
  const done = await call(client, 'GetStudy', { study_id: study.study_id });
  const best = done.best_trial;
  console.log(JSON.stringify({
    study_id: done.study_id,
    state: done.state, // 'STUDY_COMPLETED'
    completed: done.trial_counts.completed,
    epochs_spent: done.epochs_spent, // int64: a string
    best: { trial_id: best.trial_id, value: best.objective_value, config: fromStruct(best.config) },
  }));
  client.close();
}

main().catch((err) => {
  console.error(`error: ${err.details || err.message} (${err.code !== undefined ? grpc.status[err.code] : 'local'})`);
  process.exit(1);
});
