import { describeEveryCombination } from './combinations.js';

describeEveryCombination('long4');
