// The doctor's chart of a patient, and the patient's own record: the same sections, one patient.
import { loadRecord } from './record.js';
import { page } from './qilu.js';

loadRecord(page.patient);
