import { describeEveryCombination } from './combinations.js';

describeEveryCombination('legacy32');
